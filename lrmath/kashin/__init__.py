"""Kashin quantization (arXiv 2404.09737)."""
from .decompose import Decomposition, DecompositionReport, decompose
