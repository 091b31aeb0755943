"""Every gapwatch benchmark, each against a baseline measured in the same run.

``gapwatch bench`` lists them (:mod:`gapwatch.bench.cli`).
"""

__all__: list[str] = []
