"""Benchmark programs: `python -m evaluation.benchmark <subcommand> …`.

Each subcommand lives in its own module of this package and exposes `main(argv)`.
"""

SUBCOMMANDS = {
    "data": "Images per second through the tf.data training pipeline.",
    "data-scale": "Time to the first batch and peak memory per worker on a COCO-sized file.",
    "decode": "Decode (grouping) time per image, side by side with the reference grouping.",
    "train": "Training images per second per level.",
    "latency": "Model latency per level and runtime.",
    "onnx-pair": "Two ONNX files (ours, the reference's) by turns in one process, with a per-operator profile.",
    "report": "The paper's Table 3/4/5 layout for our models, with plots.",
    "int8": "COCO AP of a trained model as fp32 and full-integer int8 TFLite, and where int8 loses it.",
    "gpu": "Our model under JAX and PyTorch vs the reference, on a GPU (or --device cpu); no TensorFlow needed.",
    "video": "End-to-end video FPS, threaded pipeline against the same stages run sequentially.",
}
