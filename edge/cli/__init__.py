"""The edge package's command-line entry points: ``agent``, ``score`` and the dispatcher."""

from edge.cli.dispatch import Subcommand

__all__ = ["COMMANDS", "Subcommand"]

COMMANDS: dict[str, Subcommand] = {
    "agent": Subcommand(
        "edge.cli.agent", "edge", "run the edge agent: MQTT in, impute and score, Kafka out"
    ),
    "score": Subcommand(
        "edge.cli.score", "edge", "impute and score a CSV file offline with a model bundle"
    ),
    "simulate": Subcommand(
        "edge.simulate", "edge", "replay CSV files as MQTT devices, with injected gaps"
    ),
}
