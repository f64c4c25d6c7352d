"""Options and helpers shared by several ``hwquant`` subcommands."""

from __future__ import annotations

import argparse

__all__ = ["add_factory_option"]


def add_factory_option(p: argparse.ArgumentParser) -> None:
    """``--factory MODULE:CALLABLE``: the user's own model builder, imported only
    when given here (a model file names it but is never trusted to import it)."""
    p.add_argument(
        "--factory",
        metavar="MODULE:CALLABLE",
        help="import this builder of your own model class (when the model file names it)",
    )
