"""From outputs to people: decoding (NumPy and in-graph), the oracle, image transforms, the Predictor, drawing,
video sources and pipeline, tracking."""
