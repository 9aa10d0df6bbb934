"""Terminal output: one rich console, and the ``+ cmd`` echo for every external command."""
from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

from rich.console import Console


# Logs (CI, files) are read in wide windows; rich would otherwise fold tables to 80 columns.
LOG_WIDTH = 160


def make_console(*, stderr: bool = False, quiet: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else LOG_WIDTH
    return Console(stderr=stderr, quiet=quiet, highlight=False, width=width)


def echo_command(console: Console, argv: Sequence[str] | str) -> None:
    text = argv if isinstance(argv, str) else shlex.join(str(a) for a in argv)
    console.print(f"+ {text}", markup=False, style="dim")
