"""gapwatch edge: what runs on a gateway (numpy, onnxruntime, paho-mqtt, kafka-python; never torch).

Owns the contracts the other packages follow: the model bundle (``edge.bundle``) and the
scored-tick record (``edge.schema``).
"""

from edge.errors import EdgeError

__all__ = ["EdgeError"]
