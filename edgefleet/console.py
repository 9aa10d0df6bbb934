"""Terminal output: one rich console, and the ``+ cmd`` echo for every external command."""
from __future__ import annotations

import shlex
from collections.abc import Sequence

from rich.console import Console


def make_console(*, stderr: bool = False, quiet: bool = False) -> Console:
    return Console(stderr=stderr, quiet=quiet, highlight=False)


def echo_command(console: Console, argv: Sequence[str] | str) -> None:
    text = argv if isinstance(argv, str) else shlex.join(str(a) for a in argv)
    console.print(f"+ {text}", markup=False, style="dim")
