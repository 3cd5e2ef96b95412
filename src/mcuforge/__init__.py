"""mcuforge: from a neural network to a bit-exact int8 C library for microcontrollers."""

__version__ = "0.1.0"
