"""Errors raised by the training package.

Hierarchy::

    TrainingError               root of everything training raises
    ├── DataError               input data unusable (no time column, no numeric channel, ...)
    └── ExportError             ONNX export failed or onnxruntime disagrees with torch
"""

from __future__ import annotations

__all__ = ["DataError", "ExportError", "TrainingError"]


class TrainingError(Exception):
    """Root of every error the training package raises."""


class DataError(TrainingError):
    """Input data cannot be loaded or does not fit the bundle."""


class ExportError(TrainingError):
    """The ONNX export failed or does not reproduce torch's outputs."""
