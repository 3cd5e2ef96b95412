"""Exporters: quantized mcuforge graphs to other formats (.tflite)."""

from .tflite import export_tflite, to_tflite_bytes

__all__ = ["export_tflite", "to_tflite_bytes"]
