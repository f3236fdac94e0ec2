"""What every `fedge` subcommand shares: the Typer app, the stderr console, one-line errors."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

app = typer.Typer(
    help="Federated edge-cloud learning: train, compress, sign, deploy.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Signing keys for bundles.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console(stderr=True, emoji=False)  # ':cd:' in a path stays text


def _print_version(value: bool) -> None:
    if value:
        from fedge import __version__

        print(f"fedge {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Federated edge-cloud learning: train, compress, sign, deploy."""


def say(line: str, style: str = "", label: tuple[str, str] | None = None) -> None:
    """Print a line to stderr as text: brackets and `:name:` in paths and values stay as typed.

    `style` colours the line; `label` is a styled word before it, as (word, style).
    """
    text = Text(line, style=style)
    console.print(Text.assemble(label, " ", text) if label else text, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error and return the Exit to raise."""
    say(message, label=("error:", "bold red"))
    return typer.Exit(code)


def setup_logging(verbose: bool) -> None:
    """Rich logging for fedge; Flower's, Ray's and datasets' chatter only with --verbose."""
    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(console=console, show_path=False, markup=False)
        line = "%(message)s"
    else:  # a file or a pipe: one line per record, never wrapped, no colour codes
        handler = logging.StreamHandler(sys.stderr)
        line = "%(asctime)s %(levelname)s %(message)s"
    logging.basicConfig(level=logging.INFO, format=line, handlers=[handler], force=True)
    import flwr  # noqa: F401  (importing flwr installs its own console handler; replace it)

    flwr_logger = logging.getLogger("flwr")
    for flwr_handler in list(flwr_logger.handlers):
        flwr_logger.removeHandler(flwr_handler)
    flwr_logger.propagate = True
    for name in ("flwr", "ray", "datasets", "alembic"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
