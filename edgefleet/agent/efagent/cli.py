"""The agent's command line: start, run, status, version (see CONTRACT in the package docstring).

Each command imports the modules it uses when it runs: `status` is polled by deploy and `start`
returns before the run begins, so neither pays for the benchmark's (runner, runtimes and the stdlib
modules they need), nor `version` for the run's.
"""
import argparse
import json
import sys
from typing import List, Optional, Sequence

from .errors import EXIT_BAD_INPUT, EXIT_OK, AgentError


def parse_args(argv):
    # type: (Optional[Sequence[str]]) -> argparse.Namespace
    parser = argparse.ArgumentParser(prog="edgefleet-agent", description="edgefleet on-device benchmark agent")
    sub = parser.add_subparsers(dest="command")
    for name, text in (("run", "run the cells in the foreground"),
                       ("start", "start `run` detached; print its pid"),
                       ("status", "print the run's status as JSON")):
        command = sub.add_parser(name, help=text)
        command.add_argument("run_dir")
        if name != "status":
            command.add_argument("--workdir", default=None,
                                 help="where relative artifact paths resolve (default: run.json's, else cwd)")
        if name == "start":
            command.add_argument("--config", choices=["-"], default=None,
                                 help="'-': read run.json from stdin, validate it and write it into RUN_DIR first")
        if name == "run":
            command.add_argument("--lock-fd", type=int, default=None, help=argparse.SUPPRESS)  # from `start`
    sub.add_parser("version", help="print the agent and runtime versions as JSON")
    args = parser.parse_args(argv)
    if not args.command:
        parser.error("a command is required")
    return args


def _default_self_command():
    # type: () -> List[str]
    """How to start this agent again when no launcher said: ``python -m`` this package."""
    return [sys.executable, "-m", __package__]


def _dispatch(args, self_command):
    # type: (argparse.Namespace, List[str]) -> int
    """Runs the command; its imports are here, not at the top (see the module docstring)."""
    if args.command == "run":
        from .runner import run_command
        return run_command(args.run_dir, args.workdir, args.lock_fd)
    if args.command == "start":
        from .detach import start_command
        config = sys.stdin.read() if args.config == "-" else None
        return start_command(args.run_dir, args.workdir, config, self_command)
    if args.command == "status":
        from .status import status_command
        print(json.dumps(status_command(args.run_dir), sort_keys=True))
        return EXIT_OK
    from .envprobe import versions
    print(json.dumps(versions(), sort_keys=True))
    return EXIT_OK


def main(argv=None, self_command=None):
    # type: (Optional[Sequence[str]], Optional[List[str]]) -> int
    """``self_command``: how to start this agent again, for `start` (the zipapp's launcher passes it)."""
    args = parse_args(argv)
    try:
        return _dispatch(args, self_command or _default_self_command())
    except AgentError as exc:
        sys.stderr.write("edgefleet-agent: {}\n".format(exc))
        return EXIT_BAD_INPUT
