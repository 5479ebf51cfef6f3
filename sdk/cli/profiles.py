"""CLI: ``devicefit profiles list | show NAME | validate FILE | probe [-o FILE] [--device grpc://HOST:PORT]``.

No torch here; probing imports the agent's sysinfo / microbench (onnxruntime) only inside the handler.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from devicefit.cli import emit
from devicefit.errors import DeviceError, ProfileError


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    prof = subparsers.add_parser("profiles", parents=[common], help="device profiles: list, show, validate, probe")
    sub = prof.add_subparsers(dest="profiles_command", metavar="COMMAND", parser_class=type(prof))

    p = sub.add_parser("list", parents=[common], help="list the known device profiles (built-in, user, localhost)")
    p.add_argument("--no-localhost", action="store_true", help="do not include (or probe) the localhost profile")
    p.set_defaults(func=_list)

    p = sub.add_parser("show", parents=[common], help="show one profile (a name, an alias or a .toml path)")
    p.add_argument("name", metavar="NAME", help="profile id, alias, 'localhost', or path to a .toml file")
    p.set_defaults(func=_show)

    p = sub.add_parser("validate", parents=[common], help="check a profile file; exit 2 naming every bad field at once")
    p.add_argument("file", metavar="FILE", help="profile .toml file")
    p.set_defaults(func=_validate)

    p = sub.add_parser("probe", parents=[common], help="measure this machine (or a live agent) and write a profile")
    p.add_argument("-o", "--output", metavar="FILE", default=None,
                   help="where to write the TOML (default: the user profile directory, <id>.toml)")
    p.add_argument("--device", metavar="URL", default=None, help="probe a live agent, e.g. grpc://pi.local:50051")
    p.add_argument("--id", dest="profile_id", default=None, help="profile id (default: localhost, or the device id)")
    p.add_argument("--name", default=None, help="display name of the profile")
    p.add_argument("--category", default=None, help="iot | mobile | automotive | industrial | edge-server | host")
    p.add_argument("--seconds", type=float, default=3.0, help="micro-benchmark time budget (default 3)")
    p.set_defaults(func=_probe)

    prof.set_defaults(func=lambda args: (prof.print_help(), 2)[1])


def _table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> str:
    widths = [max(len(title), *(len(str(r.get(key, ""))) for r in rows)) for key, title in cols]
    lines = ["  ".join(title.ljust(w) for (_, title), w in zip(cols, widths, strict=True))]
    for r in rows:
        lines.append("  ".join(str(r.get(key, "")).ljust(w) for (key, _), w in zip(cols, widths, strict=True)))
    return "\n".join(lines)


def _list(args: argparse.Namespace) -> int:
    from devicefit.device_profiles import list_profiles, search_path

    profiles = list_profiles(include_localhost=not args.no_localhost)
    rows = [p.summary() for p in profiles]
    obj = {"count": len(rows), "profiles": rows, "search_path": [str(d) for d in search_path()]}
    cols = [("id", "ID"), ("category", "CATEGORY"), ("soc", "SOC"), ("cores", "CORES"), ("memory_mb", "MEM MB"),
            ("peak_gops_fp32", "FP32 GOPS"), ("peak_gops_int8", "INT8 GOPS"), ("mem_bandwidth_gbs", "GB/s")]
    emit(args, obj, lambda o: _table(o["profiles"], cols) + f"\n{o['count']} profiles")
    return 0


def _show(args: argparse.Namespace) -> int:
    from devicefit.device_profiles import load_profile, profile_path

    prof = load_profile(args.name)
    obj = prof.to_dict()
    path = profile_path(prof.id) if not args.name.endswith(".toml") else Path(args.name)
    obj["path"] = str(path) if path else None
    emit(args, obj, lambda _o: prof.to_toml().rstrip())
    return 0


def _validate(args: argparse.Namespace) -> int:
    from devicefit.device_profiles import load_profile_file

    prof = load_profile_file(args.file)
    emit(args, {"ok": True, "id": prof.id, "path": str(args.file)}, f"ok: {prof.id} ({args.file})")
    return 0


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "device"


def device_info(url: str) -> dict[str, Any]:
    """A live agent's ``info()`` (with the micro-benchmark figures) as a plain dict."""
    try:
        from devicefit.device import connect  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise DeviceError(
            f"probing a device needs devicefit.device, which could not be imported ({exc})",
            "install the agent extra: pip install 'devicefit[agent]'",
        ) from exc
    device = connect(url)
    info_fn = device.info
    try:
        params = inspect.signature(info_fn).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    kwargs: dict[str, Any] = {}
    for name in ("measure_throughput", "measure", "throughput"):
        if name in params:
            kwargs[name] = True
            break
    sys.stderr.write(f"devicefit: probing the agent at {url} (its micro-benchmark takes a few seconds)…\n")
    info = info_fn(**kwargs)
    if hasattr(info, "to_dict"):
        info = info.to_dict()
    if not isinstance(info, dict):
        raise DeviceError(f"the agent at {url} answered info() with {type(info).__name__}, not a dict",
                          "upgrade the agent and the SDK to the same devicefit version")
    close = getattr(device, "close", None)
    if callable(close):
        close()
    return info


def _probe(args: argparse.Namespace) -> int:
    from devicefit.device_profiles import LOCALHOST, save_profile, user_profile_dir
    from devicefit.device_profiles.probe import probe_info, profile_from_info

    if args.seconds <= 0:
        raise ProfileError(f"--seconds {args.seconds} is not valid", "give a positive number of seconds, e.g. 3")
    if args.device:
        info = device_info(args.device)
        pid = args.profile_id or _slug(str(info.get("device_id") or info.get("hostname") or "device"))
        source = f"devicefit profiles probe --device {args.device} (measured on the device)"
        prof = profile_from_info(info, id=pid, name=args.name, category=args.category, source=source)
    else:
        sys.stderr.write("devicefit: measuring this machine (a few seconds)…\n")
        info = probe_info(seconds_budget=args.seconds)
        pid = args.profile_id or LOCALHOST
        prof = profile_from_info(info, id=pid, name=args.name, category=args.category)
    out = Path(args.output) if args.output else user_profile_dir() / f"{prof.id}.toml"
    save_profile(prof, out)
    obj = {**prof.to_dict(), "path": str(out), "custom_kernels_isa": info.get("custom_kernels_isa")}

    def human(o: dict[str, Any]) -> str:
        return (
            f"wrote {o['path']}\n"
            f"{prof.id}: {prof.cpu.cores} cores {prof.cpu.arch} ({prof.cpu.model or prof.soc}), {prof.memory_mb} MB RAM\n"
            f"  ISA: {', '.join(prof.cpu.isa) or '-'}\n"
            f"  fp32 {prof.peak_gops_fp32:.1f} GOPS, int8 {prof.peak_gops_int8:.1f} GOPS, "
            f"memory {prof.mem_bandwidth_gbs:.1f} GB/s (measured through onnxruntime)\n"
            f"  devicefit kernels: {o['custom_kernels_isa'] or 'not built (python -m devicefit.kernels build on it)'}"
        )

    emit(args, obj, human)
    return 0
