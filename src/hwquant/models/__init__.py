"""Small reference models used by the demo, tests, benchmarks and examples."""

from hwquant.models.small import MLP, DigitsCNN

__all__ = ["MLP", "DigitsCNN"]
