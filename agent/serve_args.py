"""The options of ``devicefit agent serve`` and ``python -m devicefit.agent`` (one definition for both)."""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time

from devicefit.errors import UserInputError

#: plaintext listens on loopback only; with TLS (or --insecure-bind-all) the default is every interface
DEFAULT_GRPC = "127.0.0.1:50051"
DEFAULT_GRPC_ALL = "0.0.0.0:50051"


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grpc", metavar="HOST:PORT", default=None,
                   help=f"gRPC listen address (port 0 = any free; default {DEFAULT_GRPC}, {DEFAULT_GRPC_ALL} with TLS; none "
                        "with --mqtt alone)")
    p.add_argument("--mqtt", metavar="URL", default=None,
                   help="also (or only) serve through an MQTT broker, e.g. mqtt://broker:1883 (needs --fleet)")
    p.add_argument("--fleet", metavar="NAME", default=None, help="fleet name (MQTT topics devicefit/v1/NAME/…)")
    p.add_argument("--tag", metavar="K=V", action="append", default=[], help="device tag for fleet selection (repeat)")
    p.add_argument("--profile", default="", help="device profile name announced in the fleet status")
    p.add_argument("--store", metavar="DIR", default="~/.devicefit/agent", help="model store directory")
    p.add_argument("--device-id", default=None, help="device id (default: the host name)")
    p.add_argument("--workers", type=int, default=8, help="gRPC worker threads (default 8)")
    p.add_argument("--trust", metavar="KEY.pub", action="append", default=[],
                   help="accept only artifacts signed by this ed25519 key (repeat for several; see `devicefit keys`)")
    p.add_argument("--max-store-mb", type=float, default=None, help="store quota; uploads beyond it are refused")
    p.add_argument("--idle-timeout", type=float, default=30.0,
                   help="close an upload stream silent for this many seconds (default 30; it stays resumable)")
    p.add_argument("--max-uploads", type=int, default=4, help="concurrent uploads; more are answered BUSY (default 4)")
    p.add_argument("--tls-cert", metavar="PEM", default=None, help="serve gRPC over TLS with this certificate")
    p.add_argument("--tls-key", metavar="PEM", default=None, help="the certificate's private key")
    p.add_argument("--client-ca", metavar="PEM", default=None,
                   help="mutual TLS: clients must present a certificate signed by this CA")
    p.add_argument("--token-file", metavar="FILE", default=None,
                   help="clients must send one of these bearer tokens (one per line)")
    p.add_argument("--insecure-bind-all", action="store_true",
                   help="allow plaintext gRPC on a non-loopback address (trusted networks only)")
    p.add_argument("--trial-timeout", type=float, default=120.0, metavar="S",
                   help="a model not loaded before is first loaded and run once in a child process; refuse it when "
                        "that takes longer than this (default 120 s)")
    p.add_argument("--trial-memory-mb", type=float, default=None, metavar="MIB",
                   help="address-space limit of that child, runtime included (default: the device's physical "
                        "memory; 0: none)")
    p.add_argument("--no-trial-load", action="store_true",
                   help="load new models in the agent's own process (a model that crashes the runtime then takes "
                        "the agent down)")
    p.add_argument("--commit-every-mib", type=float, default=4.0, help="upload commit interval in MiB (default 4)")
    p.add_argument("--exit-with-parent", metavar="PID", type=int, default=0,
                   help="stop gracefully when process PID (the one that started this agent) is gone: a local agent "
                        "spawned by fit / bench / demo does not outlive a parent that was killed")


def parse_tags(items: list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserInputError(f"--tag {item!r} is not KEY=VALUE", "pass e.g. --tag site=plant-a")
        tags[key] = value
    return tags


def watch_parent(pid: int, interval_s: float = 1.0) -> threading.Thread:
    """A daemon thread that sends this process SIGTERM (the agent's graceful stop) once ``pid`` is no longer its
    parent — the parent died, even by SIGKILL, and this process was re-parented."""
    def _watch() -> None:
        while os.getppid() == pid:
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=_watch, name="exit-with-parent", daemon=True)
    t.start()
    return t


def serve(args: argparse.Namespace) -> int:
    """Run :func:`devicefit.agent.server.serve_forever` with the parsed options."""
    from devicefit.agent.server import serve_forever
    from devicefit.agent.trial_load import TrialLoader

    if args.trial_timeout <= 0 or (args.trial_memory_mb is not None and args.trial_memory_mb < 0):
        raise UserInputError(f"--trial-timeout {args.trial_timeout:g} / --trial-memory-mb {args.trial_memory_mb} "
                             "out of range", "pass a timeout > 0 s and a memory limit >= 0 MiB (0: none)")

    if args.exit_with_parent:
        watch_parent(args.exit_with_parent)
    default = DEFAULT_GRPC_ALL if args.tls_cert or args.insecure_bind_all else DEFAULT_GRPC
    address = args.grpc if args.grpc is not None or args.mqtt else default
    return serve_forever(
        address, store_dir=args.store, device_id=args.device_id, workers=args.workers,
        commit_every=int(args.commit_every_mib * 1024 * 1024), mqtt=args.mqtt, fleet=args.fleet,
        tags=parse_tags(args.tag), profile=args.profile, trust=args.trust, max_store_mb=args.max_store_mb,
        idle_timeout_s=args.idle_timeout, max_uploads=args.max_uploads, tls_cert=args.tls_cert, tls_key=args.tls_key,
        client_ca=args.client_ca, token_file=args.token_file, insecure_bind_all=args.insecure_bind_all,
        trial=TrialLoader(timeout_s=args.trial_timeout, memory_mb=args.trial_memory_mb, enabled=not args.no_trial_load),
    )
