"""Accuracy recovery after int8 static quantization vs onnxruntime's own ``quantize_static``, one run.

EfficientNet-Lite0 on 320 evaluation crops of 20 scikit-image photos (:mod:`devicefit.zoo.photos`; the
calibration crops are disjoint, but every evaluation crop is the mirror image of a calibration crop of the same
photo). ``--split photo`` splits by photo instead: all 32 crops of the 10 odd-numbered photos are the evaluation
set, the calibration crops come from the 10 others only — the split to use when the calibration data is
augmented (``distill_augment`` flips and re-crops it). Rows, all calibrated on the same ``--calib`` crops:

* onnxruntime ``quantize_static`` (QDQ, its defaults after ``quant_pre_process``) with each
  ``CalibrationMethod`` (MinMax, Entropy, Percentile, Distribution);
* devicefit ``int8_static`` (host integer format: per-channel weights, ``reduce_range`` = 7-bit weights without
  VNNI) through the quantization pipeline, one row per recovery setting of ``Int8Static`` (:data:`RECOVERY`):
  ``minmax`` / ``mse`` calibration, output-aware GPTQ re-rounding of every layer's weights
  (``rounding="gptq"``, :func:`devicefit.compressor.quant.recovery.round_weights`) and empirical bias correction
  (``bias_correction=True``, :func:`devicefit.compressor.quant.recovery.correct_biases`), alone and combined,
  and quantization-aware distillation after them (``distill_steps``, :func:`devicefit.compressor.quant.recovery.distill`:
  the QDQ graph's int8 weights and biases trained against fp32 on the same calibration crops, a quarter held out),
  optionally with the activation scales learned too (``distill_scale_lr``, LSQ).

Per row: top-1 agreement with fp32 and its drop, mean logit cosine, and host latency p50 (onnxruntime with the
agent runner's session settings, 1 thread, batch 1, rows interleaved run by run — see ``bench/quant_vs_ort.py``)
with its ratio to fp32, and the seconds quantization took. Nothing here is asserted; the numbers are for the
closing note.

    python bench/accuracy_recovery.py [--calib 64] [--rounds 3] [--runs 20] [--rows "mse;minmax"] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ORT_METHODS = ("MinMax", "Entropy", "Percentile", "Distribution")


def _quant_vs_ort() -> Any:
    spec = importlib.util.spec_from_file_location("quant_vs_ort", Path(__file__).with_name("quant_vs_ort.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ort_static(fp32: Path, calib: np.ndarray, work: Path, method: str) -> Path:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from devicefit.compressor.quant.calibration import DatasetReader

    src = work / "ort_pre.onnx"
    if not src.exists():
        quant_pre_process(str(fp32), str(src))
    name = onnx.load(str(src)).graph.input[0].name
    reader = DatasetReader([{name: calib[i : i + 16]} for i in range(0, len(calib), 16)])
    out = work / f"ort_{method}.onnx"
    quantize_static(str(src), str(out), reader, quant_format=QuantFormat.QDQ,
                    calibrate_method=getattr(CalibrationMethod, method))
    return out


#: Int8Static without its default recovery (round-to-nearest, no bias correction)
PLAIN: dict[str, Any] = {"rounding": "nearest", "bias_correction": False}
#: devicefit rows: label → Int8Static options (each one ``quantize_onnx`` call: the pipeline a plan runs)
RECOVERY: dict[str, dict[str, Any]] = {
    "minmax": {"calibration": "minmax", **PLAIN},
    "minmax + bias correction": {"calibration": "minmax", "rounding": "nearest"},
    "minmax + gptq rounding": {"calibration": "minmax", "bias_correction": False},
    "minmax + gptq rounding + bias correction": {"calibration": "minmax"},
    "mse": {"calibration": "mse", **PLAIN},
    "mse + gptq rounding + bias correction (defaults)": {},
    "defaults + distill 60": {"distill_steps": 60},
    "defaults + distill 150": {"distill_steps": 150},
    "defaults + distill 150 + learned activation scales": {"distill_steps": 150, "distill_scale_lr": 0.01},
    "defaults + distill 400 cosine lr 0.03": {"distill_steps": 400, "distill_lr": 0.03, "distill_schedule": "cosine"},
    "defaults + distill 400 cosine lr 0.03 + augment": {"distill_steps": 400, "distill_lr": 0.03,
                                                        "distill_schedule": "cosine", "distill_augment": True},
}


def photo_split() -> tuple[np.ndarray, np.ndarray]:
    """(calib, eval) split by photo: every crop of the odd-numbered photos evaluates, of the even ones calibrates
    (crop-major, like :func:`devicefit.zoo.photos.splits`); no photo is in both."""
    from devicefit.zoo import photos

    calib, ev = photos.splits()
    plan = photos.crop_plan()
    by_split: tuple[list[int], list[int]] = ([], [])
    for k, *_, is_eval in plan:
        by_split[int(is_eval)].append(k)
    crops = np.empty((len(plan), *calib.shape[1:]), calib.dtype)
    photo = np.empty(len(plan), int)
    for j, rows in ((0, calib), (1, ev)):
        where = [i for i, p in enumerate(plan) if p[-1] == bool(j)]
        crops[where], photo[where] = rows, by_split[j]
    held = photo % 2 == 1
    assert not set(photo[held]) & set(photo[~held])
    return crops[~held], crops[held]


def devicefit_static(fp32: Path, calib: np.ndarray, work: Path, options: dict[str, Any], module: Any) -> Path:
    """One int8 static model through the quantization pipeline, with the recovery ``options`` of Int8Static."""
    from devicefit.compressor.plan import Plan
    from devicefit.compressor.quant import quantize_onnx
    from devicefit.compressor.techniques import Int8Static
    from devicefit.data import Dataset

    tech = Int8Static(**options)
    out = work / f"devicefit_{abs(hash(tech.label()))}.onnx"
    quantize_onnx(fp32, out, Plan.uniform(quant=tech), calib=Dataset({"x": calib}), module=module,
                  calib_samples=len(calib))
    return out


def outputs(path: Path, x: np.ndarray) -> np.ndarray:
    from devicefit.compressor.quant.calibration import session

    s = session(str(path), optimize=True, threads=2)
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i : i + 32]})[0] for i in range(0, len(x), 32)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--ort-methods", default=",".join(ORT_METHODS))
    p.add_argument("--rows", default="", help="devicefit rows to run, ';'-separated labels of RECOVERY (all)")
    p.add_argument("--split", choices=("crop", "photo"), default="crop",
                   help="crop: the zoo's split (eval crops mirror calibration crops); photo: no photo in both")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    wanted = {r.strip() for r in args.rows.split(";") if r.strip()}

    import torch

    from devicefit.compressor.export import export_bundle
    from devicefit.zoo import efficientnet_lite0, photos

    torch.set_num_threads(2)
    calib, ev = photos.splits() if args.split == "crop" else photo_split()
    calib = calib[: args.calib]
    bundle = efficientnet_lite0.build()
    rows: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="devicefit-recovery-") as tmp:
        work = Path(tmp)
        fp32 = export_bundle(bundle, work / "fp32.onnx").path
        rows["fp32"] = fp32
        for method in [m for m in args.ort_methods.split(",") if m]:
            t0 = time.perf_counter()
            rows[f"ort quantize_static {method}"] = ort_static(fp32, calib, work, method)
            seconds[f"ort quantize_static {method}"] = time.perf_counter() - t0
            print(f"done ort {method} {seconds[f'ort quantize_static {method}']:.0f}s", file=sys.stderr, flush=True)
        for label, options in RECOVERY.items():
            if wanted and label not in wanted:
                continue
            t0 = time.perf_counter()
            row = f"devicefit int8_static {label}"
            rows[row] = devicefit_static(fp32, calib, work, options, bundle.module)
            seconds[row] = time.perf_counter() - t0
            print(f"done {row} {seconds[row]:.0f}s", file=sys.stderr, flush=True)
        ref = outputs(fp32, ev)
        table: list[dict[str, Any]] = []
        for label, path in rows.items():
            out = outputs(path, ev)
            cos = (ref * out).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1) + 1e-12)
            agree = float((ref.argmax(1) == out.argmax(1)).mean())
            table.append({"row": label, "top1_agreement": agree, "drop": 1.0 - agree, "cosine": float(cos.mean()),
                          "eval_crops": len(ev), "calib_crops": len(calib), "split": args.split})
        lat = _quant_vs_ort().latencies(rows, {"x": ev[:1]}, args.rounds, args.runs)
    for r in table:
        r["p50_ms"] = lat[r["row"]]
        r["vs_fp32"] = lat[r["row"]] / lat["fp32"]
        r["seconds"] = seconds.get(r["row"])
    print(f"{'row':62s} {'agree':>6s} {'drop':>6s} {'cosine':>7s} {'p50 ms':>7s} {'x fp32':>6s} {'quant s':>7s}")
    for r in table:
        secs = f"{r['seconds']:7.0f}" if r["seconds"] is not None else f"{'':7s}"
        print(f"{r['row']:62s} {r['top1_agreement']:6.3f} {r['drop']:6.3f} {r['cosine']:7.4f} "
              f"{r['p50_ms']:7.2f} {r['vs_fp32']:6.2f} {secs}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
