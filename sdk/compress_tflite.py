"""``devicefit.compress(..., format="tflite")``: apply one plan and write a verified ``.tflite``.

The same phases as the ONNX path (``devicefit.compress``) up to the file: copy → prune + low-rank → optional
distillation; then :func:`devicefit.compressor.export_tflite.export_tflite` converts the student and quantizes
it with a mode per layer taken from the plan's quant techniques (``float`` → float32, ``float16``,
``int8_static`` → full-integer int8, and any other technique whose ``formats`` lists ``tflite`` and that
:data:`TFLITE_MODES` maps). The metric and fidelity are computed against the *original* torch model on the
bundle's eval data, from outputs LiteRT produced.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np

from devicefit.bundle import ModelBundle
from devicefit.compressor.plan import Plan
from devicefit.compressor.techniques import TECHNIQUES, Distill, Technique
from devicefit.errors import UserInputError
from devicefit.metrics import fidelity, score
from devicefit.progress import Progress

#: quant method → TFLite mode (``devicefit.compressor.export_tflite.MODES``)
TFLITE_MODES = {"float": "float32", "float16": "float16", "int8_static": "int8", "int8_dynamic": "dynamic_int8"}
_INT_MODES = ("int8", "dynamic_int8")
_NOTE = ("TFLite int8: ai-edge-quantizer min/max ranges, nearest rounding (int8 symmetric per-channel weights, "
         "asymmetric per-tensor activations); int8_static's calibration / rounding / bias_correction options "
         "apply to the ONNX path only")


def tflite_methods() -> list[str]:
    """Methods whose ``formats`` list ``tflite`` (what a TFLite plan may use)."""
    return sorted(c.method for c in TECHNIQUES.values() if "tflite" in c.formats)


def check_plan(plan: Plan, *, int8_io: bool = False) -> None:
    """Refuse a plan holding a technique that TFLite cannot carry, naming it and the fix (and int8 inputs /
    outputs for a plan with no full-integer int8 layer: there is no int8 scale to give them)."""
    if int8_io and not any(r.quant is not None and r.quant.method == "int8_static" for r in plan.rules):
        raise UserInputError("int8 inputs / outputs need full-integer int8 layers, and the plan has no int8_static",
                             "add --quant int8_static, or drop --int8-io")
    seen: set[str] = set()
    for rule in plan.rules:
        for fam in ("prune", "lowrank", "quant"):
            tech: Technique | None = getattr(rule, fam)
            if tech is None or tech.method in seen:
                continue
            seen.add(tech.method)
            if "tflite" not in tech.formats or (fam == "quant" and tech.method not in TFLITE_MODES):
                raise UserInputError(
                    f"{fam} technique {tech.method} (rule {rule.match!r}) cannot be exported to TFLite "
                    f"(its formats: {', '.join(tech.formats)})",
                    f"use --format onnx, or a plan with TFLite techniques only: {', '.join(tflite_methods())}",
                )


def layer_modes(plan: Plan, layers: list[str]) -> dict[str, str]:
    """Layer → TFLite mode from the plan's quant choice (no choice: float32)."""
    out = {}
    for layer in layers:
        tech = plan.choice_for(layer).quant
        out[layer] = TFLITE_MODES[tech.method] if tech is not None else "float32"
    return out


def compress_tflite(b: ModelBundle, plan: Plan, out: Path, *, cfg: Distill | None, progress: bool,
                    calib_samples: int, debug: bool = False, int8_io: bool = False) -> Any:
    """The TFLite branch of :func:`devicefit.compress.compress` (``b`` loaded, ``out`` a path)."""
    from devicefit.compress import CompressResult, _count, _eval_data, _structural, carry_quant
    from devicefit.compressor.export import torch_outputs
    from devicefit.compressor.export_tflite import export_tflite, require_tflite, run_tflite
    from devicefit.compressor.layers import layer_names

    require_tflite()
    check_plan(plan, int8_io=int8_io)
    teacher = b.require_module("TFLite export")
    structural = plan.uses("prune") or plan.uses("lowrank") or cfg is not None
    ph = Progress(progress)
    student: Any = teacher
    sinfo: dict[str, Any] = {}
    dinfo: dict[str, Any] = {}
    if structural:
        student, sinfo, dinfo = _structural(b, plan, cfg, ph, progress)
    names = layer_names(student)
    qplan = carry_quant(plan, layer_names(teacher), names) if structural else plan
    modes = layer_modes(qplan, names)
    with ph.step("export", "TFLite: convert, quantize per layer, verify with LiteRT"):
        res = export_tflite(student, b.example_inputs, out, input_names=b.input_names, layer_modes=modes,
                            calib=b.calib, verify=b.eval or b.calib, calib_samples=calib_samples, debug=debug,
                            int8_io=int8_io)
    fp32_size = res.float_size_bytes
    if structural:
        with ph.step("export", "TFLite float32 of the original model (its size)"):
            ref_file = export_tflite(teacher, b.example_inputs, out.with_suffix(".fp32.tflite"),
                                     input_names=b.input_names, verify_samples=4, verify=b.eval or b.calib)
            fp32_size = ref_file.size_bytes
            ref_file.path.unlink()
    with ph.step("evaluate", "metric + fidelity vs fp32 (LiteRT vs torch)"):
        ev = _eval_data(b)
        ref = torch_outputs(teacher, ev, b.input_names)
        test = run_tflite(out.read_bytes(), ev, b.input_names)
        name = "top1_agreement" if b.metric == "accuracy" and ev.labels is None else b.metric
        metric = score(name, ref, test, ev.labels, data=ev.description or "eval")
        fid = fidelity(np.asarray(ref), test)
    planned_int = {k: m for k, m in modes.items() if m in _INT_MODES and qplan.choice_for(k).quant is not None}
    reasons = {k: f"planned {m}, the .tflite computes it in {res.layer_status.get(k, '?')}"
               for k, m in planned_int.items() if k in res.layer_status and res.layer_status[k] != m}
    reasons.update({k: "no op of the .tflite was found for this layer (scope names)"
                    for k in planned_int if k in res.unmapped_layers})
    for layer, why in reasons.items():
        ph.say(f"float fallback: {layer} — {why}")
    params, macs = _count(student, b.example_inputs, out)
    quant = {
        "format": "tflite",
        "schemes": {k: t.label() for k in names if (t := qplan.choice_for(k).quant) is not None},
        "layer_status": res.layer_status,
        "unmapped_layers": res.unmapped_layers,
        "skipped": {},
        "int_format": {"weights": "int8 symmetric per channel", "activations": "int8 asymmetric per tensor",
                       "io": "int8" if res.int8_io else "float32"},
        "notes": [_NOTE] if any(m == "int8" for m in modes.values()) else [],
        "export": res.to_dict(),
    }
    return CompressResult(
        path=out, size_bytes=res.size_bytes, compression_ratio=fp32_size / res.size_bytes, params=params,
        macs=macs, metric=metric, fidelity=fid, float_fallback_layers=sorted(reasons), plan=plan,
        int_ops=dict(collections.Counter(res.int_ops)), fp32_size_bytes=fp32_size, fallback_reasons=reasons,
        structural=sinfo, distill=dinfo, quant=quant, seconds=ph.seconds,
    )


__all__ = ["TFLITE_MODES", "check_plan", "compress_tflite", "layer_modes", "tflite_methods"]
