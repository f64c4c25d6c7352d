"""Data that ships with the dependencies (no downloads)."""

from hwquant.datasets.digits import DigitsData, digits

__all__ = ["DigitsData", "digits"]
