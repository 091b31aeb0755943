"""gapwatch pipeline: Kafka → InfluxDB sink, history for retraining, registry, dashboards.

Never imports torch or ``training`` at import time; only the retrain command loads training.
"""

from pipeline.errors import PipelineError

__all__ = ["PipelineError"]
