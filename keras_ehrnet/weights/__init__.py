"""Weights from elsewhere: the released PyTorch checkpoints (name map, import) and the ImageNet start."""
