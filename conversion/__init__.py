"""Programs: conversion (thin command-line front ends over keras_ehrnet)."""

import os

# Programs print their own progress; keep TensorFlow's C++ start-up chatter out of it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
