"""The network: sizes per level (config and presets), layers, blocks, backbone, the full model, folding, MACs."""
