"""Measuring: COCO keypoint AP, timing statistics, and the tables and plots that report them."""
