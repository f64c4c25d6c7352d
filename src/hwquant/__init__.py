"""hwquant: quantization for neural networks that run on custom hardware."""

__version__ = "0.1.0"
