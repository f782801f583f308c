"""Inference: people in images, videos and streams, with identities over time."""
