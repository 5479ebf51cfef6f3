"""Build a *measured* :class:`DeviceProfile` from a machine probe.

``probe_profile()`` measures this machine (``devicefit.agent.sysinfo`` + ``devicefit.agent.microbench``,
imported lazily: they need the agent extra — onnxruntime, onnx, psutil — but never torch).
``profile_from_info(info)`` turns an already-probed dict (e.g. a live agent's ``Device.info()``) into a
profile, so the same code serves ``profiles probe`` and ``profiles probe --device grpc://…``.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

from devicefit.device_profiles.schema import ARCHES, ISA_FEATURES, RUNTIMES, Budget, CpuSpec, DeviceProfile
from devicefit.errors import DevicefitError, ProfileError

#: the keys a probe dict must carry to become a profile
REQUIRED_INFO = ("arch", "cores_logical", "memory_mb", "peak_gops_fp32", "peak_gops_int8", "mem_bandwidth_gbs")


def default_budget(memory_mb: int, storage_free_mb: int, category: str) -> Budget:
    """Budgets for a measured machine: a quarter of RAM, a tenth of the free disk (capped), 1 point drop."""
    latency = 50.0 if category in ("host", "edge-server") else 100.0
    return Budget(
        latency_ms=latency,
        memory_mb=float(max(64, min(memory_mb // 4, 8192))),
        storage_mb=float(max(16, min(storage_free_mb // 10, 2048))),
        accuracy_drop=0.01,
    )


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _flatten(info: Mapping[str, Any]) -> dict[str, Any]:
    """Accept the throughput at the top level or nested under ``throughput`` / ``microbench``."""
    flat = dict(info)
    for key in ("throughput", "microbench", "measured"):
        nested = info.get(key)
        if isinstance(nested, Mapping):
            for k, v in nested.items():
                flat.setdefault(k, v)
    return flat


def profile_from_info(
    info: Mapping[str, Any],
    *,
    id: str = "localhost",
    name: str | None = None,
    category: str | None = None,
    source: str = "devicefit profiles probe (measured on this machine)",
) -> DeviceProfile:
    """A measured profile from ``probe_system()`` fields plus ``measure_throughput()`` figures."""
    data = _flatten(info)
    missing = [k for k in REQUIRED_INFO if data.get(k) is None]
    if missing:
        raise ProfileError(
            f"the probe result lacks {', '.join(missing)} (got keys: {', '.join(sorted(data)) or 'none'})",
            "probe with `devicefit profiles probe` on the device, or upgrade the agent so its info() carries "
            "the microbenchmark figures",
        )
    arch = str(data["arch"])
    if arch not in ARCHES:
        raise ProfileError(f"the probed machine has an unsupported architecture {arch!r}", f"supported: {', '.join(ARCHES)}")
    if category is None:
        category = "host" if id == "localhost" else ("edge-server" if arch == "x86_64" else "iot")
    versions = data.get("runtimes") or {}
    if isinstance(versions, Mapping):
        runtimes = tuple(r for r in RUNTIMES if versions.get(r))
    else:  # a plain list of names
        runtimes = tuple(r for r in RUNTIMES if r in versions)
    memory_mb = int(data["memory_mb"])
    storage_free = int(data.get("storage_free_mb") or 0)
    cpu_model = str(data.get("cpu_model") or "")
    host = str(data.get("hostname") or "")
    ort_version = versions.get("onnxruntime") if isinstance(versions, Mapping) else None
    details = data.get("details") if isinstance(data.get("details"), Mapping) else {}
    size = (details.get("fp32") or {}).get("m", "?") if isinstance(details, Mapping) else "?"
    notes = (
        f"Measured by devicefit on {host or 'this machine'}: GEMM GOPS are best-of-N through onnxruntime "
        f"{ort_version or ''} (fp32 MatMul and int8 MatMulInteger u8 x s8, {size}^3, every logical core); "
        "bandwidth is an onnxruntime Add stream counted as read + write. A busy machine measures low."
    )
    return DeviceProfile(
        id=id,
        name=name or (f"This machine ({host})" if id == "localhost" and host else id),
        vendor=str(data.get("vendor") or "measured"),
        soc=cpu_model or arch,
        category=category,
        cpu=CpuSpec(
            arch=arch,
            cores=int(data.get("cores_physical") or data["cores_logical"]),
            max_ghz=float(data.get("max_ghz") or 0.0),
            isa=tuple(f for f in data.get("isa") or () if f in ISA_FEATURES),
            model=cpu_model,
        ),
        memory_mb=memory_mb,
        storage_mb=storage_free,
        runtimes=runtimes or ("onnxruntime",),
        peak_gops_fp32=float(data["peak_gops_fp32"]),
        peak_gops_int8=float(data["peak_gops_int8"]),
        mem_bandwidth_gbs=float(data["mem_bandwidth_gbs"]),
        budget=default_budget(memory_mb, storage_free, category),
        sources=(source,),
        notes=notes,
        measured=True,
        probed_at=str(data.get("probed_at") or _now()),
    )


def probe_info(*, seconds_budget: float = 3.0, storage_dir: str | None = None) -> dict[str, Any]:
    """``probe_system()`` merged with ``measure_throughput()`` (this machine)."""
    try:
        from devicefit.agent.microbench import measure_throughput
        from devicefit.agent.sysinfo import probe_system
    except ImportError as exc:
        raise DevicefitError(
            f"measuring this machine needs the agent extra ({exc.name or exc} is missing)",
            "pip install 'devicefit[agent]'",
        ) from exc
    info = probe_system(storage_dir)
    info.update(measure_throughput(seconds_budget=seconds_budget))
    info["probed_at"] = _now()
    return info


def probe_profile(*, seconds_budget: float = 3.0, id: str = "localhost", name: str | None = None) -> DeviceProfile:
    """Measure this machine and return its profile (not cached; see ``loader.probe_localhost``)."""
    return profile_from_info(probe_info(seconds_budget=seconds_budget), id=id, name=name)
