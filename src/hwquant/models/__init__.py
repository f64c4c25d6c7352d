"""Small reference models used by the demo, tests, benchmarks and examples."""

from hwquant.models.ocr import TextLineBiLSTM
from hwquant.models.small import MLP, DigitsCNN
from hwquant.models.transformer import DigitsTransformer

__all__ = ["MLP", "DigitsCNN", "DigitsTransformer", "TextLineBiLSTM"]
