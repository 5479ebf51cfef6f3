"""CLI: ``devicefit compress MODEL [--quant S] [--plan plan.yaml] [--prune P] [--lowrank L] -o OUT.onnx``
(or ``--format tflite -o OUT.tflite``: a verified LiteRT model, same JSON).

``--json`` prints ``{"path", "size_bytes", "compression_ratio", "metric": {"name", "baseline", "compressed",
"drop"}, "float_fallback_layers", "params", "macs", …}``. The shortcuts build a uniform plan; with
``--plan`` too, the file's rules come after the shortcut's (so the file's exceptions win).
"""

from __future__ import annotations

import argparse
from typing import Any

from devicefit.cli import emit

#: what --quant / --prune / --lowrank accept. Written out because the parser must build without the compressor
#: (no torch on devices); a test checks them against the technique registry (``shortcuts.usage``).
USAGE = {
    "quant": "int8_dynamic, int8_static, int8_weight_only, int4, int4_gptq, int4_awq, smoothquant, float16, float, "
             "int8_sparse24, sparse24, int2, int3, int2_gptq, int3_gptq",
    "prune": "structured:R, magnitude:R, wanda:R, N:M (e.g. 2:4) (R = fraction removed, e.g. 0.5)",
    "lowrank": "svd:R, asvd:R, tucker2:R, spatial:R (R = fraction of params removed) or KIND:energy=E",
}


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("compress", parents=[common], help="prune / factorize / distill / quantize a model")
    p.add_argument("model", metavar="MODEL", help="zoo:NAME, file.onnx, file.pt2 or package.module:factory")
    p.add_argument("-o", "--output", metavar="OUT.onnx", required=True,
                   help="where to write the compressed model (.onnx, or .tflite with --format tflite)")
    p.add_argument("--format", choices=["onnx", "tflite"],
                   help="export format (default: from the -o suffix, .tflite → tflite, else onnx); tflite needs "
                        "the extra devicefit[tflite] and techniques whose formats list tflite: float, float16, "
                        "int8_static, structured pruning, low-rank")
    p.add_argument("--int8-io", action="store_true",
                   help="tflite with int8_static: int8 model inputs and outputs (each with its scale and zero point in "
                        "the file) instead of float ones with a QUANTIZE / DEQUANTIZE at each edge")
    p.add_argument("--kernels", choices=["standard", "devicefit"], default="standard",
                   help="how int8_sparse24 / int2 / int3 layers are written: standard (default) ONNX ops that run in any "
                        "onnxruntime (2:4: MatMulInteger, same outputs; 2/3-bit: MatMulNBits' 4-bit container, same "
                        "weights), or devicefit's own kernel ops (ai.devicefit: faster, smaller; the target's agent must "
                        "report the kernel library: `devicefit profiles probe --device URL` shows it)")
    p.add_argument("--quant", metavar="SCHEME", help=f"uniform quantization: {USAGE['quant']} (options: SCHEME:key=value,…; int8-static = int8_static)")
    p.add_argument("--plan", metavar="PLAN.yaml", help="per-layer plan (YAML or JSON)")
    p.add_argument("--prune", metavar="P", help=USAGE["prune"])
    p.add_argument("--lowrank", metavar="L", help=USAGE["lowrank"])
    p.add_argument("--distill-steps", metavar="N", type=int, help="distill the compressed model from the original")
    p.add_argument("--data", metavar="FILE.npz", help="calibration / evaluation data (one array per input, labels)")
    p.add_argument("--profile", metavar="NAME", help="target device profile (picks integer formats for its CPU)")
    p.add_argument("--calib-samples", metavar="N", type=int, default=128, help="calibration samples (default 128)")
    p.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_compress)


def build_plan(args: argparse.Namespace) -> Any:
    from devicefit.compressor.plan import Plan
    from devicefit.compressor.shortcuts import shortcut_plan
    from devicefit.errors import UserInputError

    if args.distill_steps is not None and args.distill_steps <= 0:
        raise UserInputError(f"--distill-steps {args.distill_steps} is not positive", "give a step count ≥ 1")
    plan = shortcut_plan(quant=args.quant, prune=args.prune, lowrank=args.lowrank, distill_steps=args.distill_steps)
    if args.plan:
        plan = plan.then(Plan.load(args.plan))
    if not plan.rules and plan.distill is None:
        raise UserInputError(
            "nothing to do: no --quant, --prune, --lowrank, --distill-steps or --plan given",
            f"e.g. --quant int8_dynamic (schemes: {USAGE['quant']})",
        )
    return plan


def _human(d: dict[str, Any]) -> str:
    m = d["metric"]
    lines = [
        f"wrote {d['path']}: {d['size_bytes'] / 1e6:.2f} MB ({d['compression_ratio']:.2f}x smaller than fp32)",
        f"{m['name']}: {m['baseline']:.4f} → {m['compressed']:.4f} (drop {m['drop']:.4f}) on {m.get('data') or 'eval'}",
        f"fidelity: cosine {d['fidelity']['cosine']:.4f}, SQNR {d['fidelity']['sqnr_db']:.1f} dB, "
        f"top-1 agreement {d['fidelity']['top1_agreement']:.4f}",
        f"params {d['params']:,}, MACs {d['macs']:,}; integer ops {d['int_ops'] or '{}'}",
    ]
    if d["float_fallback_layers"]:
        lines.append(f"FLOAT FALLBACK ({len(d['float_fallback_layers'])} planned-integer layers run in float):")
        lines += [f"  {k}: {v}" for k, v in d["fallback_reasons"].items()]
    return "\n".join(lines)


def _compress(args: argparse.Namespace) -> int:
    from devicefit.compress import compress

    plan = build_plan(args)
    res = compress(
        args.model,
        plan,
        data=args.data,
        out=args.output,
        profile=args.profile,
        progress=not args.no_progress,
        calib_samples=args.calib_samples,
        format=args.format,
        int8_io=args.int8_io,
        kernels=args.kernels == "devicefit",
    )
    emit(args, res.to_dict(), _human)
    return 0
