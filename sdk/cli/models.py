"""CLI: ``devicefit inspect MODEL`` and ``devicefit export MODEL -o OUT.onnx``.

``MODEL`` is ``zoo:NAME``, ``file.onnx``, ``file.pt2`` or ``package.module:factory`` (see
:func:`devicefit.models.load_model`). torch loads inside the handlers so ``devicefit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import io
from typing import Any

from devicefit.cli import emit

_MODEL_HELP = "zoo:NAME, file.onnx, file.pt2 or package.module:factory"
_DATA_HELP = "your data: .npz with one array per model input (or 'x'), optional 'labels'"


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("inspect", parents=[common], help="per-layer params, MACs and shapes of a model")
    p.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    p.add_argument("--data", metavar="FILE.npz", default=None, help=_DATA_HELP)
    p.set_defaults(func=_inspect)

    e = subparsers.add_parser("export", parents=[common], help="export a model to one verified ONNX file")
    e.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    e.add_argument("-o", "--output", metavar="OUT.onnx", required=True, help="where to write the .onnx file")
    e.add_argument("--data", metavar="FILE.npz", default=None, help=_DATA_HELP + " (used to verify parity)")
    e.add_argument(
        "--min-cosine", type=float, default=0.9999, help="fail when ONNX vs torch cosine is below this (default 0.9999)"
    )
    e.set_defaults(func=_export)


def _fmt(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _inspect_human(d: dict[str, Any]) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{d['model']} — per layer (MACs per sample)", show_lines=False)
    for col, justify in (("layer", "left"), ("type", "left"), ("params", "right"), ("MACs", "right"),
                         ("input", "left"), ("output", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for li in d["layers"]:
        table.add_row(
            li["name"], li["type"], _fmt(li["params"]), _fmt(li["macs"]),
            "x".join(map(str, li["input_shape"] or [])) or "-", "x".join(map(str, li["output_shape"] or [])) or "-",
        )
    buf = io.StringIO()
    console = Console(file=buf, width=140, force_terminal=False)
    console.print(table)
    console.print(
        f"total: {d['params']:,} params ({_fmt(d['params'])}), {d['macs']:,} MACs ({_fmt(d['macs'])}), "
        f"fp32 size {d['size_bytes'] / 1e6:.2f} MB"
    )
    return buf.getvalue().rstrip()


def inspect_model(model: str, data: str | None = None) -> dict[str, Any]:
    """``{"params", "macs", "size_bytes", "layers", "model"}`` for ``model`` (the ``inspect`` JSON)."""
    from devicefit.models import load_model

    bundle = load_model(model, data=data)
    if bundle.module is None:
        from devicefit.compressor.analysis import analyze_onnx

        assert bundle.onnx_path is not None
        shapes = {n: list(getattr(t, "shape", [])) for n, t in zip(bundle.input_names, bundle.example_inputs, strict=True)}
        analysis = analyze_onnx(bundle.onnx_path, shapes)
        size = bundle.onnx_path.stat().st_size
    else:
        from devicefit.compressor.analysis import analyze, state_size_bytes

        analysis = analyze(bundle.module, bundle.example_inputs)
        size = state_size_bytes(bundle.module)
    out = analysis.to_dict()
    return {"params": out["params"], "macs": out["macs"], "size_bytes": size, "layers": out["layers"], "model": bundle.name}


def _inspect(args: argparse.Namespace) -> int:
    emit(args, inspect_model(args.model, args.data), _inspect_human)
    return 0


def _export(args: argparse.Namespace) -> int:
    from devicefit.compressor.export import export_bundle
    from devicefit.errors import UserInputError
    from devicefit.models import load_model

    bundle = load_model(args.model, data=args.data)
    if bundle.module is None:
        raise UserInputError(
            f"{args.model} is already an ONNX model", "export takes a torch model: zoo:NAME, file.pt2 or pkg.mod:factory"
        )
    result = export_bundle(bundle, args.output, min_cosine=args.min_cosine, debug=args.debug)
    obj = result.to_dict()

    def human(d: dict[str, Any]) -> str:
        return (
            f"exported {bundle.name} -> {d['path']} ({d['size_bytes'] / 1e6:.2f} MB, one file)\n"
            f"parity vs torch on {result.verified_samples} samples: cosine {d['cosine']:.6f}, "
            f"max abs error {d['max_abs_error']:.3g}"
        )

    emit(args, obj, human)
    return 0
