"""The `fedge` command (also `python -m fedge`)."""

from fedge.cli import run  # isort: skip  # noqa: F401  (registers the subcommands, in help order)
from fedge.cli import compress  # isort: skip  # noqa: F401
from fedge.cli import audit  # isort: skip  # noqa: F401
from fedge.cli import device  # isort: skip  # noqa: F401
from fedge.cli import targets  # isort: skip  # noqa: F401
from fedge.cli.common import app


def main() -> None:
    """Console-script entry point."""
    app()
