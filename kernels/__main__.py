"""``python -m devicefit.kernels build|info``: build the kernel library now / say what this machine runs."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devicefit.kernels", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile the library for this machine into the cache (if not built yet)")
    b.add_argument("--force", action="store_true", help="rebuild even when a cached build exists")
    sub.add_parser("info", help="print the library path, the active SIMD path and the supported ones (JSON)")
    args = ap.parse_args(argv)

    from devicefit.kernels import KernelBuildError, available, supported_isas
    from devicefit.kernels.builder import build, cache_dir

    try:
        if args.cmd == "build":
            print(build(force=args.force))
            return 0
        print(json.dumps({"library": str(build()), "isa": available(), "supported": supported_isas(),
                          "cache_dir": str(cache_dir())}, indent=1))
        return 0
    except KernelBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
