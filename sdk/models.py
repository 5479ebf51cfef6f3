"""``load_model``: every way a model comes in, as one :class:`~devicefit.bundle.ModelBundle`.

``spec`` is an ``nn.Module`` (with ``example_inputs`` or ``data``), ``zoo:NAME``, ``file.onnx``,
``file.pt2`` (``torch.export.save``) or ``package.module:factory`` (returning an ``nn.Module`` — shapes
then come from ``data`` — or a ``(module, example_inputs)`` pair). ``data`` (an ``.npz`` path or a
:class:`~devicefit.data.Dataset`) replaces the bundle's calibration and evaluation data; labels in it turn
the metric into ``accuracy``.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from devicefit.bundle import MetricName, ModelBundle
from devicefit.data import Dataset, load_npz
from devicefit.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_SPEC_HELP = "give zoo:NAME, a .onnx or .pt2 file, or package.module:factory"


def load_model(
    spec: str | Path | torch.nn.Module,
    *,
    example_inputs: Any = None,
    data: str | Path | Dataset | None = None,
) -> ModelBundle:
    """Load ``spec`` (see the module docstring) into a bundle; errors are :class:`ModelLoadError` with a fix."""
    if not isinstance(spec, str | Path):
        return _from_module(spec, example_inputs, data, name=type(spec).__name__, source="nn.Module")
    text = str(spec)
    if text.startswith("zoo:"):
        from devicefit import zoo

        return _with_data(zoo.get(text), data)
    if text.endswith(".onnx"):
        return _from_onnx(Path(text), data)
    if text.endswith(".pt2"):
        return _from_pt2(Path(text), data)
    if _FACTORY.match(text):
        return _from_factory(text, data)
    if Path(text).exists():
        raise ModelLoadError(f"cannot tell what kind of model {text!r} is", f"{_SPEC_HELP} (by extension)")
    raise ModelLoadError(f"model {text!r} is not a file, zoo name or factory", _SPEC_HELP)


# --- data / metric ------------------------------------------------------------------------------------


def _dataset(data: str | Path | Dataset | None, input_names: list[str]) -> Dataset | None:
    if data is None or isinstance(data, Dataset):
        if data is not None:
            data.ordered(input_names)  # validates names
        return data
    ds = load_npz(data, input_names)
    ds.ordered(input_names)
    return ds


def _with_data(bundle: ModelBundle, data: str | Path | Dataset | None) -> ModelBundle:
    """Replace calib and eval by ``data`` (both); labels in it switch the metric to accuracy."""
    ds = _dataset(data, bundle.input_names)
    if ds is None:
        return bundle
    bundle.calib = ds
    bundle.eval = ds
    if ds.labels is not None:
        bundle.metric = "accuracy"
    return bundle


#: output names that say "an embedding / features, not class scores" (an ONNX file's only hint)
_EMBEDDING_NAMES = ("embed", "hidden", "pool", "feature", "encod", "vector")


def _guess_metric(out_shape: tuple[int, ...] | None, data: Dataset | None, out_name: str = "") -> MetricName:
    """``accuracy`` with labels; else ``top1_agreement`` for a 2-D output of class scores, ``cosine`` for
    anything else — an output named like an embedding (``embedding``, ``pooler_output`` …) included."""
    if data is not None and data.labels is not None:
        return "accuracy"
    if any(h in out_name.lower() for h in _EMBEDDING_NAMES):
        return "cosine"
    if out_shape is not None and len(out_shape) == 2 and out_shape[1] > 1:
        return "top1_agreement"
    return "cosine"


# --- torch modules ------------------------------------------------------------------------------------


def _forward_names(module: torch.nn.Module, n: int) -> list[str]:
    try:
        params = [
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    if len(params) >= n:
        return params[:n]
    return ["x"] if n == 1 else [f"input_{i}" for i in range(n)]


def _from_module(
    module: Any, example_inputs: Any, data: str | Path | Dataset | None, *, name: str, source: str
) -> ModelBundle:
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(
            f"{name} is a {type(module).__name__}, not a torch.nn.Module",
            "return an nn.Module (or a (module, example_inputs) pair) from the factory",
        )
    module.eval()
    module = _with_layers(module)
    if example_inputs is not None:
        example = tuple(example_inputs) if isinstance(example_inputs, list | tuple) else (example_inputs,)
        if not all(isinstance(t, torch.Tensor) for t in example):
            raise ModelLoadError(f"example inputs of {name} must be torch tensors", "pass a tensor or a tuple of tensors")
        input_names = _forward_names(module, len(example))
        ds = _dataset(data, input_names)
    else:
        if data is None:
            raise ModelLoadError(
                f"{name}: no example inputs and no data, so the input shapes are unknown",
                "pass --data file.npz (one array per model input) or return (module, example_inputs) from the factory",
            )
        if isinstance(data, Dataset):
            ds = data
        else:
            probe = load_npz(data)
            guess = _forward_names(module, len(probe.inputs))
            ds = load_npz(data, guess if len(probe.inputs) == 1 else None)
        input_names = _forward_names(module, len(ds.inputs))
        if set(input_names) != set(ds.names):
            input_names = list(ds.names) if len(ds.names) > 1 else input_names
            if len(ds.names) == 1:
                ds = Dataset({input_names[0]: next(iter(ds.inputs.values()))}, ds.labels, ds.description)
        example = tuple(torch.from_numpy(np.ascontiguousarray(a[:2])) for a in ds.ordered(input_names))
    try:
        with torch.inference_mode():
            out = module(*example)
    except Exception as exc:
        raise ModelLoadError(
            f"{name} fails on its example inputs: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
            "check the data / example input shapes and dtypes match the model's forward()",
        ) from exc
    first = out[0] if isinstance(out, list | tuple) else out
    shape = tuple(first.shape) if isinstance(first, torch.Tensor) else None
    axes = {n: {0: "batch"} for n, t in zip(input_names, example, strict=True) if t.dim() > 0}
    return ModelBundle(
        name=name,
        module=module,
        example_inputs=example,
        input_names=input_names,
        output_names=["output"],
        metric=_guess_metric(shape, ds),
        calib=ds,
        eval=ds,
        dynamic_axes=axes,
        source=source,
    )


def _with_layers(module: torch.nn.Module) -> torch.nn.Module:
    """``module``, or a copy whose ``nn.MultiheadAttention`` blocks have their projections as Linear layers
    (:func:`devicefit.compressor.attention.unfuse_attention`; the caller's module is left untouched)."""
    import copy

    import torch

    from devicefit.compressor.attention import unfuse_attention

    if not any(isinstance(m, torch.nn.MultiheadAttention) for m in module.modules()):
        return module
    module = copy.deepcopy(module)
    unfuse_attention(module)
    return module


def _from_factory(spec: str, data: str | Path | Dataset | None) -> ModelBundle:
    mod_name, attr = spec.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"cannot import module {mod_name!r} of factory {spec!r}: {exc}",
            "make the package importable (installed or on PYTHONPATH) and check the spelling",
        ) from exc
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise ModelLoadError(f"{mod_name} has no callable {attr!r}", "name a function returning an nn.Module")
    try:
        made = factory()
    except Exception as exc:
        raise ModelLoadError(
            f"factory {spec} raised {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
            "the factory must take no arguments and return an nn.Module or (module, example_inputs)",
        ) from exc
    example = None
    if isinstance(made, tuple) and len(made) == 2:
        made, example = made
    return _from_module(made, example, data, name=spec, source=f"factory:{spec}")


def _fixed_mode_train(self: torch.nn.Module, mode: bool = True) -> torch.nn.Module:
    return self


def _from_pt2(path: Path, data: str | Path | Dataset | None) -> ModelBundle:
    import torch

    from devicefit.models_pt2 import restore_layers

    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}", "pass the path of a .pt2 saved with torch.export.save")
    try:
        ep = torch.export.load(str(path))
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load {path} as a torch.export program: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}",
            "save it with torch.export.save(torch.export.export(model, args), 'model.pt2')",
        ) from exc
    module = ep.module()
    # its graph calls aten.linear / aten.conv2d on bare parameters: give it its Linear / Conv modules back
    restore_layers(module)
    # the unlifted module refuses .train()/.eval(); its mode was fixed at export time, so make them no-ops
    # (everything downstream calls module.eval()). deepcopy re-binds the method to the copy.
    module.train = types.MethodType(_fixed_mode_train, module)  # type: ignore[method-assign]
    module.eval = types.MethodType(_fixed_mode_train, module)  # type: ignore[method-assign]
    names = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    axes: dict[str, dict[int, str]] = {}
    example: list[torch.Tensor] = []
    for name in names:
        val = placeholders[name].meta.get("val")
        if val is None:
            continue
        dyn = {i: ("batch" if i == 0 else f"{name}_dim{i}") for i, d in enumerate(val.shape) if not isinstance(d, int)}
        if dyn:
            axes[name] = dyn
        shape = [2 if not isinstance(d, int) else d for d in val.shape]
        example.append(torch.zeros(shape, dtype=val.dtype) if val.dtype.is_floating_point else torch.ones(shape, dtype=val.dtype))
    saved = getattr(ep, "example_inputs", None)
    if saved and saved[0] and all(isinstance(t, torch.Tensor) for t in saved[0]):
        example = list(saved[0])
    ds = _dataset(data, names)
    if ds is not None:
        example = [torch.from_numpy(np.ascontiguousarray(a[:2])) for a in ds.ordered(names)]
    with torch.inference_mode():
        out = module(*example)
    first = out[0] if isinstance(out, list | tuple) else out
    return ModelBundle(
        name=path.name,
        module=module,
        example_inputs=tuple(example),
        input_names=names,
        output_names=["output"],
        metric=_guess_metric(tuple(first.shape), ds),
        calib=ds,
        eval=ds,
        dynamic_axes=axes or {n: {0: "batch"} for n in names},
        source=f"pt2:{path}",
    )


# --- ONNX ---------------------------------------------------------------------------------------------

_NP = {1: np.float32, 10: np.float16, 11: np.float64, 7: np.int64, 6: np.int32, 2: np.uint8, 3: np.int8, 9: np.bool_}


def _from_onnx(path: Path, data: str | Path | Dataset | None) -> ModelBundle:
    import onnx

    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}", "pass the path of an existing .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(str(path))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"{path} is not a valid ONNX model: {first}", "re-export it (devicefit export MODEL -o file.onnx)"
        ) from exc
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    names = [i.name for i in inputs]
    axes: dict[str, dict[int, str]] = {}
    example: list[np.ndarray] = []
    for vi in inputs:
        tt = vi.type.tensor_type
        dims = list(tt.shape.dim)
        dyn = {i: (d.dim_param or ("batch" if i == 0 else f"{vi.name}_dim{i}")) for i, d in enumerate(dims) if not d.dim_value}
        if dyn:
            axes[vi.name] = dyn
        shape = [d.dim_value or 1 for d in dims]
        example.append(np.zeros(shape, dtype=_NP.get(tt.elem_type, np.float32)))
    ds = _dataset(data, names)
    if ds is not None:
        example = [a[:2] for a in ds.ordered(names)]
    out_dims = [len(o.type.tensor_type.shape.dim) for o in model.graph.output]
    last = model.graph.output[0].type.tensor_type.shape.dim if model.graph.output else []
    out_shape = (1, last[-1].dim_value) if out_dims and out_dims[0] == 2 and last[-1].dim_value else None
    return ModelBundle(
        name=path.name,
        module=None,
        example_inputs=tuple(example),
        input_names=names,
        output_names=[o.name for o in model.graph.output],
        metric=_guess_metric(out_shape, ds, model.graph.output[0].name if model.graph.output else ""),
        calib=ds,
        eval=ds,
        dynamic_axes=axes,
        onnx_path=path,
        source=f"onnx:{path}",
    )


__all__ = ["load_model"]
