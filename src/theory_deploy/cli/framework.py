"""What every verb shares: common flags, one JSON object under --json, and errors without tracebacks.

A verb is a function `(args) -> dict`. `run_tool` parses the command line, calls the verb, and prints
the dict as `{"status":"success", ...}` (or its `summary` line for humans). A `TheoryDeployError`
becomes its own exit code and, under --json, `{"status":"error","error":{"code","message"}}`. Any
other exception is a bug: `ERR_INTERNAL`, exit 1, traceback only with --debug.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from .. import gha, output
from ..errors import TheoryDeployError, UsageError

Verb = Callable[[argparse.Namespace], dict[str, Any]]


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as ERR_USAGE (exit 2) and honours --json for them too."""

    json_mode = False

    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        err = UsageError(f"{self.prog}: {message}")
        output.emit_error(err.to_json(), f"{self.prog}: error: {message}", json_mode=_Parser.json_mode)
        sys.exit(err.exit_code)


def common_flags() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    parent.add_argument("--debug", action="store_true", help="show tracebacks and full tool output")
    return parent


def new_tool(prog: str, description: str) -> tuple[argparse.ArgumentParser, Any, argparse.ArgumentParser]:
    """The top-level parser, its sub-parsers, and the parent carrying --json/--debug for each verb."""
    parser = _Parser(prog=prog, description=description)
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    subparsers.required = True
    return parser, subparsers, common_flags()


def add_verb(
    subparsers: Any, parent: argparse.ArgumentParser, name: str, verb: Verb, help_text: str
) -> argparse.ArgumentParser:
    sub = subparsers.add_parser(name, parents=[parent], help=help_text, description=help_text)
    sub.set_defaults(handler=verb)
    return sub


class Terminated(BaseException):
    """SIGTERM (what CI runners, `timeout` and `docker stop` send), raised where the process stands so
    that every `finally` runs: worktrees, temporary files and locks are cleaned up as on Ctrl-C."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def handle_termination() -> None:
    """Turn SIGTERM into `Terminated` (main thread only: signal handlers live there)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def run_tool(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    handle_termination()
    argv = list(sys.argv[1:] if argv is None else argv)
    _Parser.json_mode = "--json" in argv
    args = parser.parse_args(argv)
    json_mode = bool(getattr(args, "json", False))
    try:
        result = args.handler(args)
    except TheoryDeployError as known:
        if getattr(args, "debug", False):
            traceback.print_exc()
        _report_error(known, json_mode)
        return known.exit_code
    except KeyboardInterrupt:
        output.progress("interrupted")
        return 130
    except Terminated:
        output.progress("terminated")
        return 128 + signal.SIGTERM
    except Exception as exc:  # noqa: BLE001 - anything else is a bug: ERR_INTERNAL, traceback only with --debug
        bug = TheoryDeployError(f"unexpected {type(exc).__name__}: {exc}")
        if getattr(args, "debug", False):
            traceback.print_exc()
        _report_error(bug, json_mode)
        return bug.exit_code
    output.emit_result(result, json_mode=json_mode)
    return 0


def _report_error(err: TheoryDeployError, json_mode: bool) -> None:
    location = err.details.get("file")
    if location:
        gha.annotate("error", err.render(), file=str(location), line=err.details.get("line"), title=err.code)
    output.emit_error(err.to_json(), f"error[{err.code}]: {err.render()}", json_mode=json_mode)


def main_for(build_parser: Callable[[], argparse.ArgumentParser]) -> Callable[[], None]:
    def main() -> None:
        sys.exit(run_tool(build_parser()))

    return main
