"""Data that ships with the dependencies (no downloads)."""

from hwquant.datasets.digits import DigitsData, digits
from hwquant.datasets.text_lines import ALPHABET, TextLines, TextLineSet, text_lines

__all__ = ["ALPHABET", "DigitsData", "TextLineSet", "TextLines", "digits", "text_lines"]
