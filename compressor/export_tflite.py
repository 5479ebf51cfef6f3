"""Verified TFLite export: litert-torch converts, ai-edge-quantizer quantizes per op, LiteRT checks parity.

``export_tflite`` converts a torch module (already pruned / factorized, or not) to a float32 ``.tflite`` at the
example's shapes with batch 1 (LiteRT models have static shapes), checks it against torch on real samples, then
quantizes it with an ai-edge-quantizer recipe built from a mode per layer:

* ``float32``: left as converted; ``float16``: weights stored in float16 (float compute);
* ``dynamic_int8``: int8 weights, activations quantized per inference by the kernel (no calibration);
* ``int8``: int8 weights and activations, ranges from calibration data (full integer).

A torch layer (``encoder.layer.0.attention.self.query``) is found in the flatbuffer through the scope names
litert-torch writes into tensor names (``…/Linear_query``); the recipe then addresses each of its ops by its
exact scope, so a layer the plan keeps float stays float while the rest is quantized. Ops outside every
planned layer (adds, reshapes, pooling) follow ``other``; with ``int8`` and ``int8_io=False`` the model keeps
float inputs and outputs (a QUANTIZE / DEQUANTIZE pair at the edges). The quantized file is checked again on
the same samples (``min_cosine`` per mode); a mismatch raises :class:`~devicefit.errors.ExportError`. What each
planned layer really computes in is read back from the file (``layer_status``).

litert-torch and ai-edge-quantizer are the optional extra ``devicefit[tflite]``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from devicefit.compressor.export import ExportResult, quiet, torch_outputs
from devicefit.data import Dataset
from devicefit.errors import ExportError, UserInputError
from devicefit.metrics import cosine as mean_cosine

Mode = Literal["float32", "float16", "dynamic_int8", "int8"]
MODES: tuple[str, ...] = ("float32", "float16", "dynamic_int8", "int8")
#: how close the file must stay to torch, per mode (mean cosine on the verify samples)
MIN_COSINE: Mapping[str, float] = {"float32": 0.9999, "float16": 0.999, "dynamic_int8": 0.97, "int8": 0.9}
#: the extra that carries the converter and the quantizer
EXTRA_FIX = "pip install 'devicefit[tflite]' (litert-torch and ai-edge-quantizer)"
#: ops that hold a layer's weights (what a plan's layer becomes)
#: (builtin op name → ai-edge-quantizer's operation name)
WEIGHT_OPS: Mapping[str, str] = {"FULLY_CONNECTED": "FULLY_CONNECTED", "CONV_2D": "CONV_2D",
                                 "DEPTHWISE_CONV_2D": "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV": "CONV_2D_TRANSPOSE",
                                 "BATCH_MATMUL": "BATCH_MATMUL", "EMBEDDING_LOOKUP": "EMBEDDING_LOOKUP"}
_FLOAT16_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "EMBEDDING_LOOKUP")
_SIG = "serving_default"
_INT_W = {"num_bits": 8, "symmetric": True, "granularity": "CHANNELWISE", "dtype": "INT"}
_INT_A = {"num_bits": 8, "symmetric": False, "granularity": "TENSORWISE", "dtype": "INT"}
_QUIET_LOGGERS = ("litert_torch", "ai_edge_quantizer", "absl", "jax")


@dataclass(frozen=True)
class TFLiteExportResult(ExportResult):
    """:class:`ExportResult` plus what the file holds: op counts, each planned layer's compute dtype."""

    mode: str = "float32"
    float_cosine: float = 1.0  #: the float32 conversion vs torch, before quantization
    ops: dict[str, int] = field(default_factory=dict)
    layer_status: dict[str, str] = field(default_factory=dict)  #: layer → float32 / float16 / dynamic_int8 / int8
    unmapped_layers: list[str] = field(default_factory=list)  #: planned layers with no op found in the file
    int8_io: bool = False
    float_size_bytes: int = 0  #: the float32 conversion's size
    int_ops: dict[str, int] = field(default_factory=dict)  #: weight ops computing in integer, by op type

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "format": "tflite", "mode": self.mode, "float_cosine": self.float_cosine,
                "ops": self.ops, "layer_status": self.layer_status, "unmapped_layers": self.unmapped_layers,
                "int8_io": self.int8_io, "float_size_bytes": self.float_size_bytes, "int_ops": self.int_ops,
                "verified_samples": self.verified_samples, "seconds": self.seconds}


def require_tflite() -> None:
    """Raise :class:`UserInputError` naming the extra when litert-torch / ai-edge-quantizer are missing.

    The first import loads TensorFlow's native libraries, which print their start-up lines (oneDNN, absl,
    torchao's optional kernels) straight to file descriptor 2: those are kept off the terminal, and shown
    only if the import fails. ``TF_CPP_MIN_LOG_LEVEL`` defaults to 2 so that the converter's C++ INFO lines
    (one per conversion) stay off it too, unless the user set it."""
    import sys

    if sys.modules.get("litert_torch") is not None and sys.modules.get("ai_edge_quantizer") is not None:
        return  # imported already (a None entry is a blocked import: it still raises below)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _native_stderr_captured() as said:
        try:
            import ai_edge_quantizer  # noqa: F401
            import litert_torch  # noqa: F401
        except ImportError as exc:
            raise UserInputError(f"TFLite export needs the optional extra devicefit[tflite] ({exc.name} is missing)",
                                 EXTRA_FIX) from exc
        except BaseException:
            said.append(True)  # a failure other than a missing package: its native output is shown
            raise


@contextlib.contextmanager
def _native_stderr_captured() -> Iterator[list[bool]]:
    """File descriptor 2 into a temporary file for the block; replayed to stderr when the block appends to the
    yielded list (kept only when the descriptor can be duplicated)."""
    import sys
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 (an embedding host): nothing to capture
        yield []
        return
    show: list[bool] = []
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield show
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if show:
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))


def _check_mode(mode: str, what: str) -> None:
    if mode not in MODES:
        raise UserInputError(f"{what}: unknown TFLite mode {mode!r}", f"use one of {', '.join(MODES)}")


# ----------------------------------------------------------------------------------------- layers ↔ ops
def layer_scopes(module: torch.nn.Module, layers: Sequence[str]) -> dict[str, str]:
    """Layer name → the scope suffix litert-torch writes for it (``/pkg.Linear_fc1`` per path segment)."""
    out: dict[str, str] = {}
    for layer in layers:
        parts, cur, segs = layer.split("."), module, []
        for part in parts:
            cur = cur.get_submodule(part)
            if not isinstance(cur, (torch.nn.ModuleList, torch.nn.ModuleDict)):  # never called: no scope
                segs.append(f"{type(cur).__module__}.{type(cur).__qualname__}_{part}")
        out[layer] = "/" + "/".join(segs)
    return out


@dataclass(frozen=True)
class _Op:
    index: int
    name: str  #: builtin op name
    scope: str  #: ai-edge-quantizer's scope: output tensor names joined by ';' plus a trailing ';'
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def _ops(model: Any) -> tuple[list[_Op], list[Any]]:
    """The main subgraph's ops (name, scope, tensors) and tensors of a flatbuffer ``ModelT``."""
    from ai_edge_litert.schema_py_generated import BuiltinOperator
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    code_names = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
    sub = model.subgraphs[0]
    ops = [
        _Op(i, code_names.get(model.operatorCodes[op.opcodeIndex].builtinCode, "CUSTOM"),
            fb.get_op_scope(op, sub.tensors), tuple(int(t) for t in op.inputs), tuple(int(t) for t in op.outputs))
        for i, op in enumerate(sub.operators)
    ]
    return ops, list(sub.tensors)


def _tensor_name(t: Any) -> str:
    n = t.name
    return n.decode() if isinstance(n, bytes) else str(n or "")


def _layouts(w: np.ndarray) -> list[np.ndarray]:
    """A torch weight as LiteRT may store it: as is, and for convs OHWI and depthwise 1HWO."""
    out = [w]
    if w.ndim == 4:
        out += [w.transpose(0, 2, 3, 1), w.transpose(1, 2, 3, 0)]
    return out


def _key(a: np.ndarray) -> tuple[tuple[int, ...], bytes]:
    import hashlib

    a = np.ascontiguousarray(a, dtype=np.float32)
    return a.shape, hashlib.blake2b(a.tobytes(), digest_size=16).digest()


def _by_direction(arrays: Sequence[np.ndarray], module: torch.nn.Module, layers: Sequence[str]) -> str | None:
    """The layer whose weight (in some layout of the same shape) points clearly the same way as one of
    ``arrays``: cosine ≥ 0.95 and every other layer's < 0.5. The converter folds constants into weights (a
    LayerNorm's scale into the next projections' columns, attention's 1/sqrt(d)), so equality is too strict."""
    scores: dict[str, float] = {}
    for a in arrays:
        flat = a.astype(np.float64).ravel()
        for layer in layers:
            w = getattr(module.get_submodule(layer), "weight", None)
            if not isinstance(w, torch.Tensor) or w.numel() != flat.size:
                continue
            for lay in _layouts(w.detach().double().cpu().numpy()):
                if lay.shape == a.shape:
                    b = lay.ravel()
                    c = abs(float(flat @ b)) / max(float(np.linalg.norm(flat) * np.linalg.norm(b)), 1e-30)
                    scores[layer] = max(scores.get(layer, 0.0), c)
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    if ranked and ranked[0][1] >= 0.95 and all(c < 0.5 for _, c in ranked[1:]):
        return ranked[0][0]
    return None


def map_layers(model: Any, module: torch.nn.Module, layers: Sequence[str]) -> dict[str, list[_Op]]:
    """Layer → its weight-holding ops in the float32 flatbuffer ``model``.

    By value first (the op's constant weight equals the layer's weight, in LiteRT's layout: exact after
    conversion), then, for folded weights (a conv with its batch norm), through the scope names litert-torch
    writes into tensor names (:func:`layer_scopes`). Ops matched by neither stay unmapped."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    ops, tensors = _ops(model)
    by_value: dict[tuple[tuple[int, ...], bytes], str | None] = {}
    for layer in layers:
        w = getattr(module.get_submodule(layer), "weight", None)
        if isinstance(w, torch.Tensor):
            for a in _layouts(w.detach().float().cpu().numpy()):
                k = _key(a)
                by_value[k] = None if k in by_value and by_value[k] != layer else layer  # tied: ambiguous
    scopes = layer_scopes(module, layers)
    found: dict[str, list[_Op]] = {layer: [] for layer in layers}
    for op in ops:
        if op.name not in WEIGHT_OPS:
            continue
        consts = [tensors[i] for i in op.inputs if i >= 0 and tensors[i].buffer > 0]
        arrays = [d for t in consts if (d := fb.get_tensor_data(t, model.buffers)) is not None
                  and d.dtype == np.float32 and d.ndim >= 2]
        hit = next((by_value[k] for a in arrays if (k := _key(a)) in by_value), None)
        if hit is None:  # a constant folded in (attention's 1/sqrt(d) in the query weight): same direction
            hit = _by_direction(arrays, module, layers)
        if hit is None:
            parts = {p for t in consts for p in _tensor_name(t).split(";") if p}
            best = max(((len(s), layer) for layer, s in scopes.items() if any(p.endswith(s) for p in parts)),
                       default=None)
            hit = best[1] if best is not None else None
        if hit is not None:
            found[hit].append(op)
    return found


# ----------------------------------------------------------------------------------------- the recipe
def _entry(regex: str, mode: str, operation: str = "*") -> dict[str, Any]:
    if mode == "float32":
        return {"regex": regex, "operation": operation, "algorithm_key": "no_quantize", "op_config": {}}
    if mode == "float16":
        cfg: dict[str, Any] = {"weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"},
                               "compute_precision": "FLOAT", "explicit_dequantize": True}
        return {"regex": regex, "operation": operation, "algorithm_key": "float_casting", "op_config": cfg}
    cfg = {"weight_tensor_config": _INT_W, "compute_precision": "INTEGER", "explicit_dequantize": False}
    if mode == "int8":
        cfg["activation_tensor_config"] = _INT_A
    return {"regex": regex, "operation": operation, "algorithm_key": "min_max_uniform_quantize", "op_config": cfg}


def _base(mode: str, regex: str) -> list[dict[str, Any]]:
    if mode == "float16":  # float casting exists for weight ops only
        return [_entry(regex, mode, op) for op in _FLOAT16_OPS]
    return [_entry(regex, mode)]


def build_recipe(layer_ops: Mapping[str, Sequence[_Op]], layer_modes: Mapping[str, str], other: str,
                 int8_io: bool = False) -> list[dict[str, Any]]:
    """ai-edge-quantizer recipe: ``other`` for every op, then each planned layer's ops by exact scope (later
    entries win); float inputs / outputs unless ``int8_io``."""
    recipe = _base(other, ".*") if other != "float32" else []
    for layer, mode in layer_modes.items():
        for op in layer_ops.get(layer, ()):
            # by op type too: an op's scope can equal the virtual OUTPUT op's (the model's last layer)
            regex, kind = "^" + re.escape(op.scope) + "$", WEIGHT_OPS[op.name]
            recipe.append(_entry(regex, "float32" if mode == "float16" and op.name not in _FLOAT16_OPS else mode, kind))
    if all(e["algorithm_key"] == "no_quantize" for e in recipe):
        return []  # nothing to quantize: the converted file as it is
    if any(e["op_config"].get("activation_tensor_config") for e in recipe) and not int8_io:
        recipe += [_entry(".*", "float32", "INPUT"), _entry(".*", "float32", "OUTPUT")]
    return recipe


def _layer_status(model: Any, layer_ops: Mapping[str, Sequence[_Op]]) -> dict[str, str]:
    """What each mapped layer computes in, read from the tensors of the file."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    ops, tensors = _ops(model)
    by_index = {op.index: op for op in ops}
    producers = {o: op for op in ops for o in op.outputs}
    status: dict[str, str] = {}
    for layer, lops in layer_ops.items():
        kinds = set()
        for old in lops:  # the quantizer inserts ops (indices move): found again by scope and type
            op = next((o for o in ops if o.scope == old.scope and o.name == old.name), by_index.get(old.index))
            if op is None:
                continue
            act = tensors[op.inputs[0]]
            weights = [tensors[i] for i in op.inputs[1:2] if i >= 0]
            w = weights[0] if weights else None
            w_prod = producers.get(op.inputs[1]) if len(op.inputs) > 1 else None
            w_type = fb.TENSOR_CODE_TO_TYPE.get(w.type) if w is not None else None
            a_type = fb.TENSOR_CODE_TO_TYPE.get(act.type)
            if w_prod is not None and w_prod.name == "DEQUANTIZE":
                src = tensors[w_prod.inputs[0]]
                kinds.add("float16" if fb.TENSOR_CODE_TO_TYPE.get(src.type) == "FLOAT16" else "int8_weight_only")
            elif w_type == "INT8" and a_type == "INT8":
                kinds.add("int8")
            elif w_type == "INT8":
                kinds.add("dynamic_int8")
            else:
                kinds.add("float32")
        if kinds:
            status[layer] = "/".join(sorted(kinds))
    return status


# ----------------------------------------------------------------------------------------- running LiteRT
class _Runner:
    """One LiteRT interpreter on the serving signature; float in, float out (int8 edges handled)."""

    def __init__(self, content: bytes, n_inputs: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interp = Interpreter(model_content=content, num_threads=1)
        self.run = self.interp.get_signature_runner(_SIG)
        details = self.run.get_input_details()
        self.inputs = [f"args_{i}" for i in range(n_inputs)]
        missing = [n for n in self.inputs if n not in details]
        if missing:
            raise ExportError(f"the .tflite signature has inputs {sorted(details)}, expected {self.inputs}",
                              "make every forward() argument a tensor input")
        self.in_details = details
        self.out_name = sorted(self.run.get_output_details())[0]
        self.out_detail = self.run.get_output_details()[self.out_name]

    def __call__(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        feed = {n: _to_input(a, self.in_details[n]) for n, a in zip(self.inputs, arrays, strict=True)}
        out = self.run(**feed)[self.out_name]
        scale, zp = self.out_detail.get("quantization", (0.0, 0))
        if out.dtype in (np.int8, np.uint8, np.int16) and scale:
            return (out.astype(np.float32) - zp) * scale
        return np.asarray(out, dtype=np.float32)


def _to_input(a: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zp = detail.get("quantization", (0.0, 0))
    if dtype.kind in "iu" and a.dtype.kind == "f" and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(a / scale + zp), info.min, info.max).astype(dtype)
    return np.ascontiguousarray(a.astype(dtype, copy=False))


def _samples(data: Dataset, names: Sequence[str]) -> Iterator[list[np.ndarray]]:
    arrays = data.ordered(names)
    for i in range(len(data)):
        yield [a[i : i + 1] for a in arrays]


def run_tflite(content: bytes, data: Dataset, input_names: Sequence[str]) -> np.ndarray:
    """The model's first output over every sample of ``data`` (batch 1 each), as float32."""
    runner = _Runner(content, len(input_names))
    return np.concatenate([runner(s) for s in _samples(data, input_names)], axis=0)


def _verify(content: bytes, ref: np.ndarray, data: Dataset, names: Sequence[str], floor: float,
            what: str, out: Path) -> tuple[float, float]:
    try:
        got = run_tflite(content, data, names)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"LiteRT failed to run the {what} .tflite: {str(exc).splitlines()[0][:300]}",
                          f"inspect {out} (run with --debug)") from exc
    if got.shape != ref.shape or not np.all(np.isfinite(got)):
        raise ExportError(f"{what} .tflite output {got.shape} (finite={bool(np.all(np.isfinite(got)))}) vs torch "
                          f"{ref.shape}", "run with --debug; the model may have data-dependent shapes")
    err = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
    cos = mean_cosine(ref, got)
    if not np.isfinite(cos) or cos < floor:
        raise ExportError(f"{what} .tflite disagrees with torch on {len(data)} samples: cosine {cos:.6f} "
                          f"(min {floor}), max abs error {err:.3g}",
                          "keep the sensitive layers float in the plan (quant: {method: float}), or pass a lower "
                          "min_cosine if this loss is expected")
    return err, cos


# ----------------------------------------------------------------------------------------- export
def export_tflite(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    out_path: str | Path,
    *,
    input_names: Sequence[str],
    mode: str = "float32",
    layer_modes: Mapping[str, str] | None = None,
    other: str | None = None,
    calib: Dataset | None = None,
    verify: Dataset | None = None,
    int8_io: bool = False,
    min_cosine: float | None = None,
    verify_samples: int = 32,
    calib_samples: int = 128,
    debug: bool = False,
) -> TFLiteExportResult:
    """Export ``module`` to one ``.tflite`` and verify it against torch (see the module docstring).

    ``mode`` applies to every layer not in ``layer_modes`` (layer name → mode); ``other`` (default: ``mode``,
    or ``int8`` / ``dynamic_int8`` when a layer uses it) to ops outside every layer. ``calib`` feeds ``int8`` calibration
    (first ``calib_samples``); ``verify`` is real data (first ``verify_samples``), ``None`` = the example.
    ``min_cosine`` defaults to :data:`MIN_COSINE` of the lowest-precision mode used.
    """
    require_tflite()
    from ai_edge_quantizer import quantizer
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    from devicefit.compressor.layers import layer_names

    _check_mode(mode, "mode")
    planned = {layer: mode for layer in layer_names(module)}
    for layer, m in (layer_modes or {}).items():
        _check_mode(m, f"layer {layer}")
        planned[layer] = m
    used = set(planned.values()) or {mode}
    # ops outside the planned layers (embedding tables, attention matmuls) follow the plan's integer mode, as the
    # ONNX path stores embeddings in int8 once any layer is quantized
    rest = other or next((m for m in ("int8", "dynamic_int8") if m in used), mode)
    _check_mode(rest, "other")
    names = list(input_names)
    example = tuple(t[:1] for t in example_inputs)
    data = verify.take(verify_samples) if verify is not None else Dataset(
        {n: t.detach().cpu().numpy() for n, t in zip(names, example, strict=True)}, description="example inputs")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    float_bytes = _convert(module, example, debug)
    ref = torch_outputs(module, data, names, batch_size=1)
    float_err, float_cos = _verify(float_bytes, ref, data, names, MIN_COSINE["float32"], "float32", out)

    model = fb.read_model(float_bytes)
    layer_ops = map_layers(model, module, list(planned))
    recipe = build_recipe(layer_ops, planned, rest, int8_io)
    content = float_bytes
    if recipe:
        q = quantizer.Quantizer(float_bytes, recipe)
        with quiet(not debug), _QuietLogs(not debug):
            if q.need_calibration:
                if calib is None:
                    raise UserInputError("full-integer int8 TFLite export needs calibration data",
                                         "pass --data FILE.npz (or use a zoo model, which ships calibration data)")
                details = _Runner(float_bytes, len(names)).in_details
                samples = [{f"args_{i}": _to_input(a, details[f"args_{i}"]) for i, a in enumerate(s)}
                           for s in _samples(calib.take(calib_samples), names)]
                qsv = q.calibrate({_SIG: samples}, num_threads=1)
            else:
                qsv = None
            try:
                content = bytes(q.quantize(qsv, enable_progress_report=False).quantized_model)
            except Exception as exc:
                raise ExportError(f"ai-edge-quantizer failed: {str(exc).splitlines()[0][:300]}",
                                  "run with --debug; keep the failing layers float in the plan") from exc
    seconds = time.perf_counter() - t0
    out.write_bytes(content)
    floor = min_cosine if min_cosine is not None else min(MIN_COSINE[m] for m in used | {rest})
    err, cos = float_err, float_cos
    if content is not float_bytes:
        err, cos = _verify(content, ref, data, names, floor, _label(used), out)
    final = fb.read_model(content)
    ops_count = collections.Counter(op.name for op in _ops(final)[0])
    mapped = {k: v for k, v in layer_ops.items() if v}
    return TFLiteExportResult(
        out, out.stat().st_size, err, cos, verified_samples=len(data), seconds=seconds, mode=_label(used),
        float_cosine=float_cos, ops=dict(sorted(ops_count.items())), layer_status=_layer_status(final, mapped),
        unmapped_layers=sorted(k for k, v in layer_ops.items() if not v), int8_io=int8_io and "int8" in used | {rest},
        float_size_bytes=len(float_bytes), int_ops=integer_ops(final),
    )


def integer_ops(model: Any) -> dict[str, int]:
    """Weight ops whose weights are int8 and not dequantized first (integer kernels), by op type."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    ops, tensors = _ops(model)
    produced = {o for op in ops for o in op.outputs}
    count: collections.Counter[str] = collections.Counter()
    for op in ops:
        w = op.inputs[1] if op.name in WEIGHT_OPS and len(op.inputs) > 1 else -1
        if w >= 0 and w not in produced and fb.TENSOR_CODE_TO_TYPE.get(tensors[w].type) == "INT8":
            count[op.name] += 1
    return dict(sorted(count.items()))


def _label(used: set[str]) -> str:
    return "+".join(m for m in MODES if m in used)


def _convert(module: torch.nn.Module, example: tuple[torch.Tensor, ...], debug: bool) -> bytes:
    import litert_torch

    was_training = module.training
    module.eval()
    try:
        with quiet(not debug), _QuietLogs(not debug):
            return bytes(litert_torch.convert(module, example).model_content())
    except Exception as exc:
        if debug:
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"litert-torch failed to convert {type(module).__name__}: {first[:300]}",
                          "run again with --debug for the converter's log; the model must be torch.export-able") from exc
    finally:
        module.train(was_training)


class _QuietLogs:
    """Raise the converter's / quantizer's loggers to ERROR (absl / rich progress included)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.levels: list[tuple[Any, int]] = []

    def __enter__(self) -> None:
        import logging

        if self.enabled:
            for name in ("", *_QUIET_LOGGERS):
                lg = logging.getLogger(name)
                self.levels.append((lg, lg.level))
                lg.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        for lg, lvl in self.levels:
            lg.setLevel(lvl)


def export_bundle_tflite(bundle: Any, out_path: str | Path, *, module: torch.nn.Module | None = None,
                         **kwargs: Any) -> TFLiteExportResult:
    """:func:`export_tflite` with the bundle's module, names, example inputs, calibration and eval data."""
    mod = module if module is not None else bundle.require_module("TFLite export")
    return export_tflite(mod, bundle.example_inputs, out_path, input_names=bundle.input_names,
                         calib=bundle.calib, verify=bundle.eval or bundle.calib, **kwargs)


__all__ = ["EXTRA_FIX", "MIN_COSINE", "MODES", "TFLiteExportResult", "build_recipe", "export_bundle_tflite",
           "export_tflite", "integer_ops", "layer_scopes", "map_layers", "require_tflite", "run_tflite"]
