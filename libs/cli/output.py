"""Where the CLI prints: wrapped to the terminal when there is one, never cut when piped.

Rich renders to 80 columns when stdout is no terminal and shortens cells with an ellipsis to fit;
an address cut to ``127.0.0.1:500…`` in a log or a ``| grep`` is worse than useless. When stdout
is piped (and no COLUMNS says otherwise) the console is as wide as :data:`PIPED_WIDTH`, and tables
are only as wide as their content, so every address and path is printed whole.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.table import Table

PIPED_WIDTH = 1000


def make_console() -> Console:
    """The console a CLI module prints to."""
    piped = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    return Console(width=PIPED_WIDTH if piped else None)


def table(title: str, *columns: str) -> Table:
    """A table whose cells fold rather than end in an ellipsis when a terminal is too narrow."""
    result = Table(title=title)
    for column in columns:
        result.add_column(column, overflow="fold")
    return result
