"""``devicefit.compress``: apply one plan to a model and say what came out (size, metric, what really runs).

Phases: copy the module → prune + low-rank (``compressor.structural``) → optional distillation
(``compressor.distill``) → fp32 ONNX export → per-layer quantization (``compressor.quant``) → metric and
fidelity on the bundle's eval data against the *original* fp32 model. ONNX-only bundles (no torch module)
take graph-level plans (quantization) only. ``format="tflite"`` writes a verified ``.tflite`` instead
(:mod:`devicefit.compress_tflite`).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from devicefit.bundle import ModelBundle
from devicefit.compressor.plan import LayerRule, Plan
from devicefit.compressor.techniques import Distill
from devicefit.data import Dataset
from devicefit.errors import UserInputError
from devicefit.metrics import MetricResult, fidelity, score
from devicefit.progress import Progress

if TYPE_CHECKING:
    from devicefit.compressor.quant import QuantResult

#: what ``compress`` writes
FORMATS = ("onnx", "tflite")
_REF_CACHE: dict[tuple[str, int, int, str], np.ndarray] = {}


@dataclass
class CompressResult:
    """One compressed model: file, size, cost, quality vs the fp32 model, and what runs in integer."""

    path: Path
    size_bytes: int
    compression_ratio: float  #: fp32 ONNX bytes / compressed bytes
    params: int  #: of the structural model (quantization does not change the count)
    macs: int  #: per sample (quantization does not change MACs)
    metric: MetricResult
    fidelity: dict[str, float]
    float_fallback_layers: list[str]
    plan: Plan
    int_ops: dict[str, int]
    fp32_size_bytes: int = 0
    fallback_reasons: dict[str, str] = field(default_factory=dict)
    structural: dict[str, Any] = field(default_factory=dict)
    distill: dict[str, Any] = field(default_factory=dict)
    quant: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``devicefit compress --json``."""
        return {
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "fp32_size_bytes": self.fp32_size_bytes,
            "compression_ratio": self.compression_ratio,
            "metric": self.metric.to_dict(),
            "fidelity": self.fidelity,
            "float_fallback_layers": self.float_fallback_layers,
            "fallback_reasons": self.fallback_reasons,
            "int_ops": self.int_ops,
            "params": self.params,
            "macs": self.macs,
            "plan": self.plan.to_dict(),
            "structural": self.structural,
            "distill": self.distill,
            "quant": self.quant,
            "seconds": self.seconds,
        }


def _bundle(model: ModelBundle | str | Path, data: Any) -> ModelBundle:
    from devicefit.models import _with_data, load_model

    if isinstance(model, ModelBundle):
        return _with_data(replace(model), data) if data is not None else model
    return load_model(model, data=data)


def carry_quant(plan: Plan, before: list[str], after: list[str]) -> Plan:
    """Give the factors of a factorized layer (``fc.down``, ``fc.up`` …) that layer's quant choice."""
    extra = []
    after_set = set(after)
    for layer in before:
        tech = plan.choice_for(layer).quant
        if tech is None or layer in after_set:
            continue
        extra += [LayerRule(f, quant=tech) for f in after if f.startswith(layer + ".") and plan.choice_for(f).quant is None]
    return Plan(plan.rules + tuple(extra), plan.distill) if extra else plan


def reference_outputs(path: Path, data: Dataset) -> np.ndarray:
    """fp32 outputs of ``path`` on ``data`` (cached per file and dataset: searches compress many plans)."""
    from devicefit.runtime import run_onnx

    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, data.fingerprint())
    if key not in _REF_CACHE:
        _REF_CACHE.clear()
        _REF_CACHE[key] = run_onnx(path, data)
    return _REF_CACHE[key]


def _count(module: Any, example: Any, onnx_path: Path) -> tuple[int, int]:
    try:
        if module is not None:
            from devicefit.compressor.analysis import analyze

            a = analyze(module, example)
        else:
            from devicefit.compressor.analysis import analyze_onnx

            a = analyze_onnx(onnx_path)
        return int(a.params), int(a.macs)
    except Exception:  # counting is informative; never fail a compression on it
        return 0, 0


def _structural(b: ModelBundle, plan: Plan, cfg: Distill | None, ph: Progress,
                progress: bool) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Copy the module, prune / factorize it, distill it. Returns (student, structural info, distill info)."""
    import copy

    teacher = b.require_module("pruning / low-rank / distillation")
    info: dict[str, Any] = {}
    dinfo: dict[str, Any] = {}
    student = copy.deepcopy(teacher).eval()
    if plan.uses("prune") or plan.uses("lowrank"):
        from devicefit.compressor.structural import apply_structural

        with ph.step("structural", "prune + low-rank"):
            res = apply_structural(student, plan, b.calib, b.example_inputs, b.input_names)
        student = res.module
        info = res.to_dict()
        for step in info.get("refused", []):
            ph.say(f"refused {step['layer']} {step['method']}: {step['detail']}")
    if cfg is not None:
        from devicefit.compressor.distill import distill

        calib = b.require_data("calib")
        with ph.step("distill", f"{cfg.steps or ''} steps from the fp32 teacher"):
            dres = distill(student, teacher, calib, cfg, b.input_names, progress=progress)
        student = getattr(dres, "module", student)
        dinfo = dres.to_dict() if hasattr(dres, "to_dict") else {}
    return student, info, dinfo


def compress(
    model: ModelBundle | str | Path,
    plan: Plan,
    *,
    data: Any = None,
    out: str | Path,
    profile: Any = None,
    distill: Distill | None = None,
    progress: bool = True,
    calib_samples: int = 128,
    format: str | None = None,
    int8_io: bool = False,
    kernels: bool = False,
) -> CompressResult:
    """Compress ``model`` with ``plan`` into ``out`` and measure it (see the module docstring).
    How ``LowRank(kind="asvd")`` layers are fitted is the technique's ``asvd_method``.

    ``format`` is ``onnx`` or ``tflite`` (default: from ``out``'s suffix; ``.tflite`` → tflite, see
    :mod:`devicefit.compress_tflite`). ``int8_io`` (tflite, with full-integer int8 layers): int8 model inputs
    and outputs instead of float ones. ``kernels``: layers whose technique runs devicefit's own kernels
    (``int8_sparse24``, 2- / 3-bit ``lowbit_weight_only``) use its ``ai.devicefit`` ops, for a device whose agent
    reports the kernel library; ``False`` (default) writes their standard-op lowering, which runs anywhere
    (2:4: the same outputs; 2- / 3-bit: the same weights in ``MatMulNBits``' 4-bit container)."""
    from devicefit.compressor.export import export_bundle

    out = Path(out)
    fmt = format or ("tflite" if out.suffix == ".tflite" else "onnx")
    if fmt not in FORMATS:
        raise UserInputError(f"unknown export format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    if out.suffix in (".onnx", ".tflite") and out.suffix != f".{fmt}":
        raise UserInputError(f"output {out.name} does not match the format {fmt}", f"write to {out.stem}.{fmt}")
    if int8_io and fmt != "tflite":
        raise UserInputError("int8 inputs / outputs are a TFLite option", "add --format tflite (and a .tflite output)")
    if fmt == "tflite":
        from devicefit.compress_tflite import check_plan

        check_plan(plan, int8_io=int8_io)  # before loading anything: a plan TFLite cannot carry fails at once
    b = _bundle(model, data)
    out.parent.mkdir(parents=True, exist_ok=True)
    prof = _profile(profile)
    cfg = distill or plan.distill
    structural = plan.uses("prune") or plan.uses("lowrank") or cfg is not None
    if fmt == "tflite":
        from devicefit.compress_tflite import compress_tflite

        if b.module is None:
            raise UserInputError(f"{b.name} is an ONNX model: TFLite export converts the torch model",
                                 "pass the PyTorch model (zoo:NAME, file.pt2, package.module:factory) or --format onnx")
        return compress_tflite(b, plan, out, cfg=cfg, progress=progress, calib_samples=calib_samples,  # type: ignore[no-any-return]
                               int8_io=int8_io)
    if b.module is None and structural:
        raise UserInputError(
            f"{b.name} is an ONNX model: pruning, low-rank and distillation need the torch model",
            "pass the PyTorch model (zoo:NAME, file.pt2, package.module:factory) or a quant-only plan",
        )
    ph = Progress(progress)
    with tempfile.TemporaryDirectory(prefix="devicefit-compress-") as tmp:
        work = Path(tmp)
        if b.onnx_path is not None and (b.module is None or not structural):
            ref_path = Path(b.onnx_path)
        else:
            with ph.step("export", "fp32 reference ONNX"):
                ref_path = export_bundle(b, work / "reference.fp32.onnx").path
        student: Any = b.module
        sinfo: dict[str, Any] = {}
        dinfo: dict[str, Any] = {}
        fp32_path = ref_path
        if structural:
            student, sinfo, dinfo = _structural(b, plan, cfg, ph, progress)
            with ph.step("export", "fp32 ONNX of the pruned / factorized model"):
                fp32_path = export_bundle(b, work / "student.fp32.onnx", module=student).path
        qres: QuantResult | None = None
        if plan.uses("quant"):
            from devicefit.compressor.layers import layer_names
            from devicefit.compressor.quant import quantize_onnx

            names = layer_names(student) if student is not None else None
            qplan = carry_quant(plan, layer_names(b.require_module('quantize')), names) if structural and names is not None else plan
            with ph.step("quantize", "per-layer quantization + optimized-graph check"):
                qres = quantize_onnx(
                    fp32_path, out, qplan, layer_names=names, calib=b.calib, profile=prof, module=student,
                    input_names=b.input_names, calib_samples=calib_samples, progress=ph.say, kernels=kernels,
                )
            for layer in qres.float_fallback_layers:
                ph.say(f"float fallback: {layer} — {qres.fallback_reasons[layer]}")
        else:
            shutil.copyfile(fp32_path, out)
        with ph.step("evaluate", "metric + fidelity vs fp32"):
            ev = _eval_data(b)
            from devicefit.runtime import run_onnx

            ref = reference_outputs(ref_path, ev)
            test = run_onnx(out, ev)
            name = "top1_agreement" if b.metric == "accuracy" and ev.labels is None else b.metric
            metric = score(name, ref, test, ev.labels, data=ev.description or "eval")
            fid = fidelity(ref, test)
        fp32_size = ref_path.stat().st_size
        params, macs = _count(student, b.example_inputs, fp32_path)
    size = out.stat().st_size
    return CompressResult(
        path=out,
        size_bytes=size,
        compression_ratio=fp32_size / size,
        params=params,
        macs=macs,
        metric=metric,
        fidelity=fid,
        float_fallback_layers=list(qres.float_fallback_layers) if qres else [],
        plan=plan,
        int_ops=dict(qres.int_ops) if qres else {},
        fp32_size_bytes=fp32_size,
        fallback_reasons=dict(qres.fallback_reasons) if qres else {},
        structural=sinfo,
        distill=dinfo,
        quant=_quant_info(qres),
        seconds=ph.seconds,
    )


def _eval_data(b: ModelBundle, n: int = 64) -> Dataset:
    """The bundle's eval split (else calib); without data, ``n`` random inputs shaped like the example
    inputs (normal floats, integer inputs copied from the example) — fidelity only, and labelled so."""
    if b.eval is not None or b.calib is not None:
        return b.eval or b.require_data("calib")
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for name, ex in zip(b.input_names, b.example_inputs, strict=True):
        a = np.asarray(ex.detach().cpu().numpy() if hasattr(ex, "detach") else ex)
        reps = (n // max(a.shape[0], 1) + 1,) + (1,) * (a.ndim - 1)
        base = np.tile(a, reps)[:n]
        arrays[name] = rng.standard_normal(base.shape).astype(a.dtype) if a.dtype.kind == "f" else base
    return Dataset(arrays, None, f"{n} random inputs (no data given: fidelity only)")


def _quant_info(q: QuantResult | None) -> dict[str, Any]:
    if q is None:
        return {}
    d = q.to_dict()
    return {k: d[k] for k in ("schemes", "layer_status", "unmapped_layers", "skipped", "int_format", "notes")}


def _profile(profile: Any) -> Any:
    if profile is None or not isinstance(profile, (str, Path)):
        return profile
    from devicefit.device_profiles import load_profile

    return load_profile(profile)


__all__ = ["FORMATS", "CompressResult", "carry_quant", "compress", "reference_outputs"]
