"""Deployment: exporters, graph clean-ups and runtimes for the exported artefacts."""
