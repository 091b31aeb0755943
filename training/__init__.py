"""gapwatch training: data loading, the PyTorch VAE, calibration, ONNX export, evaluation.

Importing this package does not import torch; the modules that need it import it themselves.
"""

from training.errors import TrainingError

__all__ = ["TrainingError"]
