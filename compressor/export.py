"""Verified ONNX export: the dynamo exporter, one file, dynamic axes, parity checked with onnxruntime.

``export_onnx`` exports with ``torch.onnx.export(..., dynamo=True, external_data=False)``, names the graph
inputs / outputs and dynamic dimensions as asked, checks the file with ``onnx.checker``, then runs
onnxruntime on real samples at a batch size different from the export batch (proving the dynamic axis) and
compares with torch (max abs error, mean cosine). Parity below ``min_cosine`` (or a non-finite output)
raises :class:`~devicefit.errors.ExportError`.

The weights of a recurrent layer (ONNX ``GRU`` / ``LSTM``) are folded into initializers named after the layer
(:func:`fold_recurrent_weights`). Other initializer names are the torch parameter names (``fc1.weight``, ``encoder.layer.0.attention.self.query.bias``);
quantization maps torch layers to ONNX nodes through them, so they are never renamed here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from devicefit.data import Dataset
from devicefit.errors import ExportError
from devicefit.metrics import cosine as mean_cosine

if TYPE_CHECKING:
    import onnx

    from devicefit.bundle import ModelBundle

#: ONNX opset of exported models (LayerNormalization needs 17; onnxruntime's quantizers handle 18).
OPSET = 18
_QUIET_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "torch._export", "onnxscript")


@dataclass(frozen=True)
class ExportResult:
    """The exported file and its parity with torch (on ``verified_samples`` real samples)."""

    path: Path
    size_bytes: int
    max_abs_error: float
    cosine: float
    verified_samples: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "max_abs_error": self.max_abs_error,
            "cosine": self.cosine,
        }


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Silence the exporter's prints, warnings and log lines (``enabled=False`` under ``--debug``)."""
    if not enabled:
        yield
        return
    loggers = [logging.getLogger(n) for n in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    sink = io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)


def _first_output(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        return _first_output(next(iter(out.values())))
    if isinstance(out, Sequence) and out:
        return _first_output(out[0])
    raise ExportError(f"model returned {type(out).__name__}, not a tensor", "return a tensor (or a tuple of tensors)")


def torch_outputs(module: torch.nn.Module, dataset: Dataset, input_names: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """The module's first output (float32 numpy) over every sample of ``dataset``, batched, in eval mode."""
    was_training = module.training
    module.eval()
    outs: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for batch in dataset.batches(batch_size):
                args = [torch.from_numpy(np.ascontiguousarray(batch[n])) for n in input_names]
                outs.append(_first_output(module(*args)).detach().float().cpu().numpy())
    finally:
        module.train(was_training)
    return np.concatenate(outs, axis=0)


def _dynamic_shapes(example: Sequence[torch.Tensor], input_names: Sequence[str], dynamic_axes: Mapping[str, Mapping[int, str]]) -> tuple[Any, ...]:
    shapes: list[Any] = []
    for name, t in zip(input_names, example, strict=True):
        axes = dynamic_axes.get(name, {})
        shapes.append({int(ax): torch.export.Dim.DYNAMIC for ax in axes} if axes and t.dim() else None)
    return tuple(shapes)


def _widen_batch(example: Sequence[torch.Tensor], input_names: Sequence[str], dynamic_axes: Mapping[str, Mapping[int, str]]) -> tuple[torch.Tensor, ...]:
    """Repeat a batch of 1 to 2 along dynamic axis 0 (a size-1 example would specialise the axis)."""
    out = []
    for name, t in zip(input_names, example, strict=True):
        if 0 in dynamic_axes.get(name, {}) and t.dim() and t.shape[0] == 1:
            t = torch.cat([t, t], dim=0)
        out.append(t)
    return tuple(out)


def _rename_values(graph: onnx.GraphProto, mapping: Mapping[str, str]) -> None:
    """Rename graph values (never initializers); an existing value already called ``new`` is moved aside."""
    init = {i.name for i in graph.initializer}
    used = {v for n in graph.node for v in (*n.input, *n.output)} | {i.name for i in graph.input} | init
    mapping = {old: new for old, new in mapping.items() if old != new}
    for new in list(mapping.values()):
        if new in used and new not in mapping and new not in init:
            alt, k = f"{new}__0", 0
            while alt in used:
                k += 1
                alt = f"{new}__{k}"
            mapping = {new: alt, **mapping}
            used.add(alt)

    def ren(name: str) -> str:
        return mapping.get(name, name)

    for n in graph.node:
        n.input[:] = [ren(v) for v in n.input]
        n.output[:] = [ren(v) for v in n.output]
    for coll in (graph.input, graph.output, graph.value_info):
        for vi in coll:
            vi.name = ren(vi.name)


def _rename_dims(model: onnx.ModelProto, input_names: Sequence[str], dynamic_axes: Mapping[str, Mapping[int, str]]) -> None:
    """Give the exporter's symbolic dims (s0, s1…) the names in ``dynamic_axes`` (``batch``, ``seq``)."""
    dims: dict[str, str] = {}
    by_name = {vi.name: vi for vi in model.graph.input}
    for name in input_names:
        vi = by_name.get(name)
        if vi is None:
            continue
        shape = vi.type.tensor_type.shape.dim
        for ax, label in dynamic_axes.get(name, {}).items():
            if int(ax) < len(shape) and shape[int(ax)].dim_param:
                dims.setdefault(shape[int(ax)].dim_param, label)
    for coll in (model.graph.input, model.graph.output, model.graph.value_info):
        for vi in coll:
            for d in vi.type.tensor_type.shape.dim:
                if d.dim_param in dims:
                    d.dim_param = dims[d.dim_param]


def _restore_param_names(model: onnx.ModelProto, module: torch.nn.Module) -> list[str]:
    """Rename folded copies of parameters (``val_40`` = ``query.weight`` transposed for a MatMul) back to the
    torch parameter name, so every weight initializer is named after its torch parameter.

    Matching is by exact value (the parameter or its transpose). Returns the restored names.
    """
    import hashlib

    from onnx import numpy_helper

    def key(arr: np.ndarray) -> tuple[tuple[int, ...], str, str]:
        a = np.ascontiguousarray(arr)
        return a.shape, str(a.dtype), hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest()

    present = {i.name for i in model.graph.initializer}
    wanted: dict[tuple[tuple[int, ...], str, str], str | None] = {}
    for pname, p in module.named_parameters():
        if pname in present or p.dim() != 2:
            continue
        arr = p.detach().cpu().numpy()
        for k in {key(arr), key(arr.T)}:
            wanted[k] = None if k in wanted else pname  # ambiguous (tied values): leave unnamed
    if not wanted:
        return []
    mapping: dict[str, str] = {}
    for init in model.graph.initializer:
        if init.name in present and init.name.startswith("val_") and len(init.dims) == 2:
            target = wanted.get(key(numpy_helper.to_array(init)))
            if target and target not in present and target not in mapping.values():
                mapping[init.name] = target
    for init in model.graph.initializer:
        init.name = mapping.get(init.name, init.name)
    for n in model.graph.node:
        n.input[:] = [mapping.get(v, v) for v in n.input]
    return sorted(mapping.values())


#: ONNX recurrent ops: inputs 1, 2, 3 are the weights W, R and the bias B
RECURRENT_OPS = ("GRU", "LSTM", "RNN")


def _constant_cone(model: onnx.ModelProto, tensor: str, inits: set[str],
                   producers: Mapping[str, onnx.NodeProto]) -> list[onnx.NodeProto] | None:
    """The nodes computing ``tensor`` from initializers alone (``None`` when it depends on a graph input)."""
    nodes: dict[int, onnx.NodeProto] = {}
    stack = [tensor]
    while stack:
        t = stack.pop()
        if not t or t in inits:
            continue
        p = producers.get(t)
        if p is None:
            return None
        if id(p) not in nodes:
            nodes[id(p)] = p
            stack.extend(p.input)
    return list(nodes.values())


def fold_recurrent_weights(model: onnx.ModelProto) -> list[str]:
    """Make the weights of every ``GRU`` / ``LSTM`` / ``RNN`` node initializers named after its layer.

    The exporter builds W / R / B of a recurrent node from the torch parameters with Slice / Concat / Reshape
    (gate order differs); its optimizer folds them only under a size limit. Here every such constant cone is
    evaluated once by onnxruntime and replaced by one initializer, named ``<layer>.weight_ih_l<k>``,
    ``<layer>.weight_hh_l<k>`` and ``<layer>.bias_l<k>`` (layer from the node's name-scope metadata, ``k`` the
    node's index among that layer's nodes), so quantizers see a constant weight and every tensor derived from
    it names its layer. Returns the initializer names written."""
    import onnx
    from onnx import helper

    from devicefit.compressor.quant import graph as G
    from devicefit.compressor.quant.mapping import scope_layer
    from devicefit.kernels.ort_session import cpu_session

    rnns = [n for n in model.graph.node if n.op_type in RECURRENT_OPS]
    if not rnns:
        return []
    inits = {i.name for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output if o}
    cones: dict[str, list[onnx.NodeProto]] = {}
    for n in rnns:
        for t in list(n.input)[1:4]:
            if t and t not in inits and t not in cones:
                cone = _constant_cone(model, t, inits, producers)
                if cone is not None:
                    cones[t] = cone
    values: dict[str, np.ndarray] = {}
    if cones:
        wanted = {id(n) for cone in cones.values() for n in cone}
        nodes = [n for n in model.graph.node if id(n) in wanted]
        used = {i for n in nodes for i in n.input}
        graph = helper.make_graph(
            nodes, "recurrent_weights", [],
            [helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in cones],
            [i for i in model.graph.initializer if i.name in used],
        )
        sub = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
        outs = cpu_session(sub.SerializeToString()).run(list(cones), {})
        values = dict(zip(cones, outs, strict=True))
    for t, arr in values.items():
        G.set_initializer(model, t, arr)
        for n in model.graph.node:
            if t in n.output:  # its producer is dead now
                n.output[:] = [o if o != t else f"{t}__folded" for o in n.output]
    G.remove_dead_nodes(model)
    # name each recurrent node's weights after its layer
    present = {i.name for i in model.graph.initializer}
    index: dict[str, int] = {}
    written: list[str] = []
    for n in rnns:
        layer = scope_layer(n)
        if layer is None:
            continue
        k = index.get(layer, 0)
        index[layer] = k + 1
        for pos, stem in ((1, "weight_ih"), (2, "weight_hh"), (3, "bias")):
            old = n.input[pos] if len(n.input) > pos else ""
            new = f"{layer}.{stem}_l{k}"
            if old in present and old != new and new not in present:
                G.rename_tensor(model, old, new)
                present.discard(old)
                present.add(new)
            if new in present:
                written.append(new)
    produced = {o for n in model.graph.node for o in n.output}
    kept = [vi for vi in model.graph.value_info if vi.name in produced]  # drop the folded tensors' entries
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    return written


def _verify_batch(export_batch: int) -> int:
    return 5 if export_batch != 5 else 3


def export_onnx(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    out_path: str | Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    verify: Dataset | None = None,
    atol: float | None = None,
    min_cosine: float = 0.9999,
    verify_samples: int = 48,
    opset: int = OPSET,
    debug: bool = False,
) -> ExportResult:
    """Export ``module`` to one ONNX file and verify it against torch (see the module docstring).

    ``verify`` is real data (first ``verify_samples`` samples are used); ``None`` verifies on the example
    inputs only. ``atol`` (optional) also bounds the max abs error.
    """
    import onnx

    from devicefit.kernels.ort_session import cpu_session, run_batches, session_options

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = list(input_names)
    example = _widen_batch(tuple(example_inputs), names, dynamic_axes)
    before = set(out.parent.iterdir())
    was_training = module.training
    module.eval()
    t0 = time.perf_counter()
    try:
        with quiet(not debug):
            torch.onnx.export(
                module,
                example,
                str(out),
                dynamic_shapes=_dynamic_shapes(example, names, dynamic_axes),
                dynamo=True,
                external_data=False,
                opset_version=opset,
                verbose=False,
            )
    except Exception as exc:
        if debug:
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(
            f"torch.onnx.export (dynamo) failed for {type(module).__name__}: {first[:300]}",
            "run again with --debug for the exporter's log; the model must be torch.export-able",
        ) from exc
    finally:
        module.train(was_training)
    seconds = time.perf_counter() - t0

    # external data would be written next to the model as <name>.data (other processes may share the folder)
    extra = sorted(p.name for p in set(out.parent.iterdir()) - before - {out} if p.name.startswith(out.stem))
    model = onnx.load(str(out), load_external_data=False)
    if extra or any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise ExportError(f"export wrote external data next to {out} ({extra})", "report this: exports must be one file")
    graph_inputs = [i.name for i in model.graph.input]
    if len(graph_inputs) != len(names):
        raise ExportError(
            f"exported graph has inputs {graph_inputs}, expected {len(names)} ({names})",
            "make every forward() argument a tensor input, in input_names order",
        )
    mapping = dict(zip(graph_inputs, names, strict=True))
    mapping.update({o.name: n for o, n in zip(model.graph.output, output_names, strict=False)})
    _rename_values(model.graph, mapping)
    _rename_dims(model, names, dynamic_axes)
    _restore_param_names(model, module)
    fold_recurrent_weights(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported model fails onnx.checker: {str(exc).splitlines()[0]}", "run with --debug") from exc
    onnx.save(model, str(out))

    data = verify.take(verify_samples) if verify is not None else Dataset(
        {n: t.detach().cpu().numpy() for n, t in zip(names, example, strict=True)}, description="example inputs"
    )
    bs = _verify_batch(int(example[0].shape[0]) if example and example[0].dim() else 1)
    ref = torch_outputs(module, data, names, batch_size=bs)
    session = cpu_session(out, session_options(threads=1))
    try:
        got = run_batches(session, data.batches(bs), names)
    except Exception as exc:
        raise ExportError(
            f"onnxruntime failed on the exported model at batch size {bs}: {str(exc).splitlines()[0][:300]}",
            "the dynamic axes may have been specialised during export; check dynamic_axes / the model's reshapes",
        ) from exc
    if got.shape != ref.shape or not np.all(np.isfinite(got)):
        raise ExportError(
            f"exported model output {got.shape} (finite={bool(np.all(np.isfinite(got)))}) vs torch {ref.shape}",
            "run with --debug and check the model for data-dependent shapes",
        )
    err = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
    cos = mean_cosine(ref, got)
    if not np.isfinite(cos) or cos < min_cosine or (atol is not None and err > atol):
        raise ExportError(
            f"exported ONNX disagrees with torch on {len(data)} samples: cosine {cos:.6f} (min {min_cosine}), "
            f"max abs error {err:.3g}" + (f" (atol {atol})" if atol is not None else ""),
            f"inspect {out} with --debug; try another opset (now {opset})",
        )
    return ExportResult(out, out.stat().st_size, err, cos, verified_samples=len(data), seconds=seconds)


def export_bundle(
    bundle: ModelBundle,
    out_path: str | Path,
    *,
    module: torch.nn.Module | None = None,
    verify: bool = True,
    min_cosine: float = 0.9999,
    debug: bool = False,
) -> ExportResult:
    """Export ``module`` (default: the bundle's) with the bundle's names, axes and example inputs.

    With ``verify`` the parity check runs on the bundle's eval data (else calib); otherwise on the example
    inputs only.
    """
    mod = module if module is not None else bundle.require_module("export")
    data = (bundle.eval or bundle.calib) if verify else None
    return export_onnx(
        mod,
        bundle.example_inputs,
        out_path,
        input_names=bundle.input_names,
        output_names=bundle.output_names,
        dynamic_axes=bundle.dynamic_axes,
        verify=data,
        min_cosine=min_cosine,
        debug=debug,
    )


__all__ = ["OPSET", "RECURRENT_OPS", "ExportResult", "export_bundle", "export_onnx", "fold_recurrent_weights", "quiet", "torch_outputs"]
