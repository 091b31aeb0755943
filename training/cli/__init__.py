"""The training package's command-line entry points: ``train`` and ``evaluate``."""

from edge.cli.dispatch import Subcommand

__all__ = ["COMMANDS"]

COMMANDS: dict[str, Subcommand] = {
    "train": Subcommand(
        "training.cli.train", "train", "train a VAE on sensor history and write a model bundle"
    ),
    "evaluate": Subcommand("training.cli.evaluate", "train", "evaluate a bundle against baselines"),
}
