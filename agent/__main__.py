"""``python -m devicefit.agent --grpc HOST:PORT --store DIR [--device-id ID]`` (same as ``devicefit agent serve``)."""

from __future__ import annotations

import argparse
import sys

from devicefit.errors import DevicefitError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devicefit.agent", description="devicefit on-device agent")
    p.add_argument("--grpc", metavar="HOST:PORT", default="0.0.0.0:50051", help="listen address (port 0 = any free)")
    p.add_argument("--store", metavar="DIR", default="~/.devicefit/agent", help="model store directory")
    p.add_argument("--device-id", default=None, help="device id (default: the host name)")
    p.add_argument("--workers", type=int, default=8, help="gRPC worker threads (default 8)")
    p.add_argument("--commit-every-mib", type=float, default=4.0, help="upload commit interval in MiB (default 4)")
    args = p.parse_args(argv)
    from devicefit.agent.server import serve_forever

    try:
        return serve_forever(
            args.grpc, store_dir=args.store, device_id=args.device_id, workers=args.workers,
            commit_every=int(args.commit_every_mib * 1024 * 1024),
        )
    except DevicefitError as exc:
        sys.stderr.write(f"devicefit agent: error: {exc.problem}" + (f" — fix: {exc.fix}" if exc.fix else "") + "\n")
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
