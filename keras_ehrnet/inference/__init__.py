"""From outputs to people: decoding (NumPy and in-graph), the oracle, image transforms, the Predictor, drawing."""
