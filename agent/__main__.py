"""``python -m devicefit.agent [--grpc HOST:PORT] [--mqtt URL --fleet NAME] --store DIR [--device-id ID]``
(same as ``devicefit agent serve``)."""

from __future__ import annotations

import argparse
import sys

from devicefit.agent.serve_args import add_serve_arguments, serve
from devicefit.errors import DevicefitError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devicefit.agent", description="devicefit on-device agent")
    add_serve_arguments(p)
    args = p.parse_args(argv)
    try:
        return serve(args)
    except DevicefitError as exc:
        sys.stderr.write(f"devicefit agent: error: {exc.problem}" + (f" — fix: {exc.fix}" if exc.fix else "") + "\n")
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
