"""TFLite full-integer int8 vs ONNX int8 static on EfficientNet-Lite0 and real photos, one run.

EfficientNet-Lite0 calibrated on ``--calib`` crops and judged on the 320 evaluation crops of
:mod:`devicefit.zoo.photos` (disjoint). Rows, each written by ``devicefit.compress`` with a uniform plan:

* ``tflite int8``: ``--format tflite --quant int8_static`` (litert-torch + ai-edge-quantizer, min/max ranges,
  float inputs / outputs), outputs from LiteRT; ``tflite int8, _fc float``: the same with the classifier kept
  float (its 1000 logits quantized per tensor to int8 cost top-1 agreement);
* ``onnx int8_static``: the ONNX path with ``Int8Static``'s defaults (mse calibration, GPTQ rounding, bias
  correction), outputs from onnxruntime;
* ``onnx int8_static minmax``: the ONNX path with the search's quick settings (minmax, nearest, no bias
  correction): the same recipe as the TFLite row.

Per row: top-1 agreement with fp32 (the torch model for TFLite, the fp32 ONNX for ONNX), mean logit cosine, file
size and the seconds ``compress`` took. Nothing is asserted; the numbers are for the closing note.

    python bench/tflite_export.py [--calib 64] [--rows "tflite int8;onnx int8_static"] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "tflite int8": ("tflite", {}),
    "tflite int8, _fc float": ("tflite", {"keep_float": "_fc"}),
    "onnx int8_static": ("onnx", {}),
    "onnx int8_static minmax": ("onnx", {"calibration": "minmax", "rounding": "nearest", "bias_correction": False}),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--rows", default="", help="rows to run, ';'-separated labels of ROWS (all)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    wanted = {r.strip() for r in args.rows.split(";") if r.strip()} or set(ROWS)

    import torch

    from devicefit.compress import compress
    from devicefit.compressor.plan import Plan
    from devicefit.compressor.techniques import Int8Static, KeepFloat
    from devicefit.data import Dataset
    from devicefit.zoo import efficientnet_lite0, photos

    torch.set_num_threads(2)
    calib, ev = photos.splits()
    bundle = efficientnet_lite0.build()
    bundle = replace(bundle, calib=Dataset({"x": calib[: args.calib]}, description=f"{args.calib} photo crops"),
                     eval=Dataset({"x": ev}, description=f"{len(ev)} photo crops (disjoint)"))
    table: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="devicefit-tflite-bench-") as tmp:
        for label, (fmt, options) in ROWS.items():
            if label not in wanted:
                continue
            out = Path(tmp) / f"{label.replace(' ', '_')}.{fmt}"
            t0 = time.perf_counter()
            options = dict(options)
            plan = Plan.uniform(quant=Int8Static(**{k: v for k, v in options.items() if k != "keep_float"}))
            if "keep_float" in options:
                plan = plan.then(Plan.uniform(quant=KeepFloat(), match=options["keep_float"]))
            res = compress(bundle, plan, out=out, format=fmt, progress=False, calib_samples=args.calib)
            secs = time.perf_counter() - t0
            table.append({"row": label, "top1_agreement": res.metric.compressed, "cosine": res.fidelity["cosine"],
                          "size_mb": res.size_bytes / 1e6, "seconds": secs, "eval_crops": len(ev),
                          "calib_crops": args.calib, "float_fallback_layers": res.float_fallback_layers})
            print(f"done {label} {secs:.0f}s", file=sys.stderr, flush=True)
    print(f"{'row':28s} {'agree':>6s} {'cosine':>7s} {'MB':>6s} {'seconds':>7s}")
    for r in table:
        print(f"{r['row']:28s} {r['top1_agreement']:6.3f} {r['cosine']:7.4f} {r['size_mb']:6.2f} {r['seconds']:7.0f}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
