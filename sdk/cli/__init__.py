"""``devicefit`` command line. Each area registers its subcommands from its own module.

Contract: ``--json`` prints exactly one JSON object on stdout; user errors print one line naming the
problem and the fix on stderr and exit 2 (no traceback unless ``--debug``); exit 3 = budget not met.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from devicefit import __version__
from devicefit.errors import DevicefitError

#: modules under devicefit.cli that define ``register(subparsers)``; each adds its own subcommands.
COMMAND_MODULES = ("profiles", "models", "compress", "agent", "fit", "demo", "fleet", "keys", "certs")


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad options as one line + exit 2 (argparse's own code) without usage spam."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"devicefit: error: {message} — run `{self.prog} --help` for valid options\n")


def emit(args: argparse.Namespace, obj: dict[str, Any], human: Callable[[dict[str, Any]], str] | str | None = None) -> None:
    """Print ``obj`` as one JSON object (``--json``) or its human rendering."""
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        return
    if human is None:
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    elif isinstance(human, str):
        sys.stdout.write(human + "\n")
    else:
        sys.stdout.write(human(obj) + "\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    parser = _Parser(prog="devicefit", description="Fit trained models to edge devices.", parents=[common])
    parser.add_argument("--version", action="version", version=f"devicefit {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"devicefit.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"devicefit.cli.{name}":
                continue  # area not built yet
            raise
        mod.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
        return int(rc or 0)
    except DevicefitError as exc:
        if args.debug:
            raise
        msg = f"devicefit: error: {exc.problem}"
        if exc.fix:
            msg += f" — fix: {exc.fix}"
        sys.stderr.write(msg + "\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("devicefit: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
