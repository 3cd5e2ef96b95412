"""Quantization: fixed-point arithmetic, calibration and post-training quantization."""
