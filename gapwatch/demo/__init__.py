"""The main job end to end: train, replay devices through agent and sink, summarise.

``gapwatch demo`` runs it (:mod:`gapwatch.demo.cli`).
"""

__all__: list[str] = []
