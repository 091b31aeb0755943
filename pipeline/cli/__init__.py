"""The pipeline package's command-line entry points."""

from edge.cli.dispatch import Subcommand

__all__ = ["COMMANDS"]

COMMANDS: dict[str, Subcommand] = {
    "sink": Subcommand(
        "pipeline.cli.sink", "sink", "consume scored ticks from Kafka into InfluxDB"
    ),
    "history": Subcommand("pipeline.cli.history", "sink", "export observed history from InfluxDB"),
    "retrain": Subcommand(
        "pipeline.cli.retrain",
        "sink,train",
        "train a challenger from history, promote if not worse",
    ),
    "registry": Subcommand(
        "pipeline.cli.registry", "sink", "list, promote, roll back model versions"
    ),
    "dashboard": Subcommand(
        "pipeline.cli.dashboard", "dashboard", "serve the built-in dashboard of flagged readings"
    ),
}
