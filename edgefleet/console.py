"""Terminal output: one rich console, and the ``+ cmd`` echo for every external command."""
from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

from rich.console import Console


# Logs (CI, files) are read in wide windows; rich would otherwise fold tables to 80 columns.
LOG_WIDTH = 160


class _Console(Console):
    """A rich console that renders nothing when quiet.

    rich lays out every table and progress frame before a quiet console throws it away; with one quiet
    console per thread (parallel deploys through the API) that was ~0.07 s of CPU per deploy, all
    holding the GIL.
    """

    def print(self, *objects: object, **kwargs: object) -> None:  # type: ignore[override]
        if not self.quiet:
            super().print(*objects, **kwargs)  # type: ignore[arg-type]


def make_console(*, stderr: bool = False, quiet: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else LOG_WIDTH
    return _Console(stderr=stderr, quiet=quiet, highlight=False, width=width)


def echo_command(console: Console, argv: Sequence[str] | str) -> None:
    text = argv if isinstance(argv, str) else shlex.join(str(a) for a in argv)
    console.print(f"+ {text}", markup=False, style="dim")


def progress_line(line: str) -> None:
    """A progress line for a caller that gave no log of its own: on stderr, since stdout may be a report."""
    print(line, file=sys.stderr, flush=True)
