"""CLI: ``devicefit fleet ls|rollout|status|rollback|resume`` and ``devicefit broker``.

    devicefit broker --port 1883 &
    devicefit fleet ls --broker mqtt://127.0.0.1:1883 --fleet lab
    devicefit fleet rollout out/model.onnx --broker mqtt://127.0.0.1:1883 --fleet lab --waves 0.1,0.5,1 --max-p90-ms 20
    devicefit fleet status --fleet lab          # from the state file; no broker needed
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from devicefit.cli import emit
from devicefit.errors import UserInputError


def _target_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--broker", metavar="URL", default=None, help="MQTT broker, e.g. mqtt://127.0.0.1:1883")
    p.add_argument("--devices", metavar="URLS", default=None, help="or: comma-separated grpc:// agents (no broker)")
    p.add_argument("--fleet", metavar="NAME", required=required, help="fleet name")
    p.add_argument("--state", metavar="FILE", default=None, help="rollout state file (default ~/.devicefit/fleet.sqlite)")


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    b = subparsers.add_parser("broker", parents=[common], help="run the embedded MQTT broker (amqtt) on loopback")
    b.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    b.add_argument("--port", type=int, default=1883, help="port (default 1883; 0 = any free)")
    b.set_defaults(func=_broker)

    f = subparsers.add_parser("fleet", parents=[common], help="devices behind a broker: list, roll out, roll back")
    sub = f.add_subparsers(dest="fleet_command", metavar="COMMAND", parser_class=type(f))
    ls = sub.add_parser("ls", parents=[common], help="list the fleet's devices (online, tags, active model)")
    _target_args(ls)
    ls.add_argument("--select", metavar="K=V", action="append", default=[], help="tag / profile filter (repeat)")
    ls.set_defaults(func=_ls)
    ro = sub.add_parser("rollout", parents=[common], help="roll a model file out in gated waves")
    ro.add_argument("file", metavar="FILE", help="model file (.onnx or .tflite)")
    _target_args(ro)
    ro.add_argument("--select", metavar="K=V", action="append", default=[], help="tag / profile filter (repeat)")
    ro.add_argument("--waves", default="0.05,0.25,1.0", help="cumulative fractions (default 0.05,0.25,1.0)")
    ro.add_argument("--max-p90-ms", type=float, default=None, help="gate: p90 budget on every device")
    ro.add_argument("--max-regression", type=float, default=1.10, help="gate: median new/previous p90 (default 1.10; 0 = off)")
    ro.add_argument("--max-failed-fraction", type=float, default=0.0, help="gate: failed share of a wave (default 0)")
    ro.add_argument("--runs", type=int, default=20, help="benchmark runs per device (default 20)")
    ro.add_argument("--report", metavar="DIR", default=None, help="write rollout-<id>.json / .html here")
    ro.set_defaults(func=_rollout)
    for name, helptext, fn in (("status", "a rollout's state per wave and device", _status),
                               ("rollback", "put a rollout's devices back on their previous model", _rollback),
                               ("resume", "finish a rollout a stopped or killed host left", _resume)):
        p = sub.add_parser(name, parents=[common], help=helptext)
        p.add_argument("rollout_id", metavar="ID", nargs="?" if name == "status" else None, help="rollout id")
        _target_args(p, required=name != "status")
        p.add_argument("--report", metavar="DIR", default=None, help="write rollout-<id>.json / .html here")
        p.set_defaults(func=fn)
    f.set_defaults(func=lambda args: (f.print_help(), 2)[1])


def _select(items: list[str]) -> dict[str, str] | None:
    from devicefit.agent.serve_args import parse_tags

    return parse_tags(items) or None


def _open(args: argparse.Namespace) -> Any:
    from devicefit.fleet import Fleet

    if bool(args.broker) == bool(args.devices):
        raise UserInputError("name the fleet's broker or its devices", "pass --broker mqtt://HOST:PORT or --devices grpc://…")
    target = args.broker or [u for u in args.devices.split(",") if u]
    return Fleet(target, fleet=args.fleet, state=args.state)


def _progress(args: argparse.Namespace) -> Any:
    if args.json:
        return None

    def show(wave: int, n: int, phase: str, count: int) -> None:
        sys.stderr.write(f"wave {wave + 1}/{n}: {phase} ({count} device(s))\n")
        sys.stderr.flush()

    return show


def _human(d: dict[str, Any]) -> str:
    lines = [f"rollout {d['id']} of {d['model_id']} ({d['sha256'][:12]}) to fleet {d['fleet']}: {d['state']}"
             + (f" — {d['error']}" if d.get("error") else "")]
    for w in d["wave_status"]:
        states: dict[str, int] = {}
        for dev in d["devices"]:
            if dev["wave"] == w["wave"]:
                states[dev["state"]] = states.get(dev["state"], 0) + 1
        lines.append(f"  wave {w['wave'] + 1} ({d['waves'][w['wave']]:.0%}): {w['state']:<11} "
                     + " ".join(f"{k}={v}" for k, v in sorted(states.items())) + f"  host bytes {w['host_bytes']}")
    for dev in d["devices"]:
        p90 = f"p90 {dev['p90_ms']:.3f} ms" if dev["p90_ms"] is not None else ""
        lines.append(f"    {dev['device_id']:<20} wave {dev['wave'] + 1} {dev['state']:<12} {p90} {dev['error'] or ''}")
    return "\n".join(lines)


def _broker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from devicefit.transport.broker import EmbeddedBroker

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    broker = EmbeddedBroker(host=args.host, port=args.port)
    sys.stdout.write(f"devicefit broker listening on {broker.url}\n")
    sys.stdout.flush()
    while not stop.wait(0.5):
        pass
    broker.stop()
    return 0


def _ls(args: argparse.Namespace) -> int:
    with _open(args) as fleet:
        devs = [d.to_dict() for d in fleet.devices(_select(args.select))]
    emit(args, {"fleet": args.fleet, "devices": devs}, lambda d: "\n".join(
        f"{x['device_id']:<20} {'online ' if x['online'] else 'offline'} {x['active_model_id'] or '-':<20} "
        + " ".join(f"{k}={v}" for k, v in sorted(x["tags"].items())) for x in d["devices"]) or "no devices")
    return 0


def _rollout(args: argparse.Namespace) -> int:
    from devicefit.fleet import Gate

    waves = [float(x) for x in args.waves.split(",") if x]
    gate = Gate(max_p90_ms=args.max_p90_ms, max_regression=args.max_regression or None,
                max_failed_fraction=args.max_failed_fraction)
    with _open(args) as fleet:
        r = fleet.rollout(args.file, waves=waves, gate=gate, select=_select(args.select), runs=args.runs,
                          report_dir=args.report, progress=_progress(args))
    emit(args, r.to_dict(), _human)
    return 0 if r.state == "succeeded" else 1


def _status(args: argparse.Namespace) -> int:
    from devicefit.fleet import default_state_path
    from devicefit.fleet.report import write_report
    from devicefit.fleet.state import RolloutStore

    store = RolloutStore(args.state or default_state_path())
    try:
        rid = args.rollout_id or next(iter(store.ids(fleet=args.fleet)), None)
        if rid is None:
            raise UserInputError(f"no rollout of fleet {args.fleet} in {store.path}", "start one with `fleet rollout`")
        r = store.load(rid)
        if args.report:
            write_report(r, args.report)
    finally:
        store.close()
    emit(args, r.to_dict(), _human)
    return 0


def _rollback(args: argparse.Namespace) -> int:
    with _open(args) as fleet:
        r = fleet.rollback(args.rollout_id, report_dir=args.report)
    emit(args, r.to_dict(), _human)
    return 0


def _resume(args: argparse.Namespace) -> int:
    with _open(args) as fleet:
        r = fleet.resume(args.rollout_id, report_dir=args.report, progress=_progress(args))
    emit(args, r.to_dict(), _human)
    return 0 if r.state == "succeeded" else 1
