"""Per-layer sensitivity of an ONNX-only model: the graph-side twin of :mod:`.sensitivity`.

The same fake techniques (:meth:`~devicefit.compressor.techniques.Technique.fake`: the weight transforms of
:mod:`devicefit.compressor.fake` and the activation quantizer of :func:`~devicefit.compressor.fake.fake_act_quant`)
applied to one layer at a time — on the fp32 ONNX graph, run by onnxruntime, instead of on a torch module.

:class:`FakeGraph` builds **one** session in which every layer can be fake-compressed per run, so a table of
``layers × options`` evaluations costs one session and one pass over the slice each:

* each layer's weight initializer is also a graph input (an *overridable initializer*): a run that feeds a
  transformed weight replaces it, one that does not keeps the fp32 weight;
* each layer's activation input goes through a switchable quantizer ``x' = Where(mode > 0, fq(x), x)``: mode 1
  quantizes with the batch's own range (int8 dynamic), mode 2 with the range fed in (int8 static: the
  slice's min / max, collected once) — the uint8 affine rounding of ``fake_act_quant``.

The drops are metric drops vs the fp32 graph's outputs on the slice, cached like the torch table (per model
hash + data hash + option label) and meant for **ranking**, as in the torch path. :class:`OnnxJointDrop` is
the whole-plan twin of :class:`.sensitivity.JointDrop` on the same session.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from devicefit.compressor.search.sensitivity import SensitivityTable, sweep_options
from devicefit.compressor.search.space import Option, SearchSpace
from devicefit.data import Dataset
from devicefit.metrics import score

_MODES = {None: 0.0, "dynamic": 1.0, "static": 2.0}


class FakeGraph:
    """The fp32 graph of ``path`` with every layer of ``layers`` fake-compressible per run (module docstring)."""

    def __init__(self, path: str | Path, layers: Sequence[str], *, input_names: Sequence[str], batch_size: int = 64) -> None:
        import onnx
        from onnx import TensorProto, helper

        from devicefit.compressor.quant import graph as G
        from devicefit.compressor.quant.mapping import map_layers
        from devicefit.kernels.ort_session import cpu_session

        self.input_names, self.batch_size = list(input_names), int(batch_size)
        model = G.load(path)
        G.ensure_node_names(model)
        lmap = map_layers(model, list(layers))
        inits = G.initializers(model)
        nodes = G.node_by_name(model)
        self.layers = [layer for layer in layers if layer in lmap.nodes]
        #: layer -> [(weight initializer, its layout: "kn" [in, out], "nk" [out, in], "conv")]
        self.weights: dict[str, list[tuple[str, str]]] = {}
        self._fp32: dict[str, np.ndarray] = {}
        #: layer -> the activation tensors its nodes read (the inputs of the switchable quantizers)
        self.acts: dict[str, list[str]] = {}
        self._orig = onnx.ModelProto()
        self._orig.CopyFrom(model)
        self._lmap = lmap
        listed = {i.name for i in model.graph.input}
        added_inputs: list[onnx.ValueInfoProto] = []
        new_inits: list[onnx.TensorProto] = []
        pre: dict[str, list[onnx.NodeProto]] = {}  # compute node -> the nodes to insert before it
        for i, layer in enumerate(self.layers):
            ws: dict[str, tuple[str, str]] = {}
            for ln in lmap.nodes[layer]:
                ws.setdefault(ln.weight, (ln.weight, ln.layout))
            self.weights[layer] = list(ws.values())
            for w in ws:
                t = inits[w]
                self._fp32[w] = G.to_array(t).astype(np.float32)
                if w not in listed:  # an older export lists its initializers as inputs already
                    added_inputs.append(helper.make_tensor_value_info(w, t.data_type, list(t.dims)))
            mode, lo, hi = (f"__fake_{k}_{i}" for k in ("mode", "lo", "hi"))
            for nm in (mode, lo, hi):
                new_inits.append(helper.make_tensor(nm, TensorProto.FLOAT, [], [0.0]))
                added_inputs.append(helper.make_tensor_value_info(nm, TensorProto.FLOAT, []))
            self.acts[layer] = []
            for j, ln in enumerate(lmap.nodes[layer]):
                x = ln.input
                if x not in self.acts[layer]:
                    self.acts[layer].append(x)
                p = f"__fake_{i}_{j}_"
                chain = _fake_quant_nodes(x, p, mode, lo, hi)
                pre.setdefault(ln.node, []).extend(chain)
                node = nodes[ln.node]
                node.input[0] = p + "out"
        consts = [helper.make_tensor(f"__fake_c_{k}", TensorProto.FLOAT, [], [v])
                  for k, v in (("zero", 0.0), ("one", 1.0), ("half", 0.5), ("eps", 1e-12), ("q", 255.0), ("two", 2.0))]
        new_inits.extend(consts)
        ordered: list[onnx.NodeProto] = []
        for node in model.graph.node:
            ordered.extend(pre.get(node.name, []))
            ordered.append(node)
        del model.graph.node[:]
        model.graph.node.extend(ordered)
        model.graph.initializer.extend(new_inits)
        model.graph.input.extend(added_inputs)
        # the layer inputs as extra outputs, for the static ranges
        self._act_outputs = sorted({x for xs in self.acts.values() for x in xs})
        self._probe_model = onnx.ModelProto()
        self._probe_model.CopyFrom(model)
        have = {o.name for o in model.graph.output}
        for x in self._act_outputs:
            if x not in have:
                self._probe_model.graph.output.append(helper.make_empty_tensor_value_info(x))
        self.session = cpu_session(model.SerializeToString())
        self.ranges: dict[str, tuple[float, float]] = {}

    # ------------------------------------------------------------------------------ runs
    def _batches(self, data: Dataset) -> list[dict[str, np.ndarray]]:
        from devicefit.kernels.ort_session import feeds

        return [feeds(self.session, b, self.input_names) for b in data.batches(self.batch_size)]

    def collect_ranges(self, data: Dataset) -> None:
        """The (min, max) of each layer's input over ``data`` (static activation ranges)."""
        from devicefit.kernels.ort_session import cpu_session

        sess = cpu_session(self._probe_model.SerializeToString())
        names = [o.name for o in sess.get_outputs()]
        lo: dict[str, float] = {}
        hi: dict[str, float] = {}
        for b in self._batches(data):
            for name, arr in zip(names, sess.run(None, b), strict=True):
                if name in self._act_outputs:
                    a = np.asarray(arr, dtype=np.float64)
                    lo[name] = min(lo.get(name, np.inf), float(a.min()))
                    hi[name] = max(hi.get(name, -np.inf), float(a.max()))
        for layer, xs in self.acts.items():
            self.ranges[layer] = (min(lo[x] for x in xs), max(hi[x] for x in xs))

    def capture(self, data: Dataset) -> dict[str, np.ndarray]:
        """Each layer input tensor over ``data`` (keep it small: every activation is held)."""
        from devicefit.kernels.ort_session import cpu_session

        sess = cpu_session(self._probe_model.SerializeToString())
        names = [o.name for o in sess.get_outputs()]
        got: dict[str, list[np.ndarray]] = {}
        for b in self._batches(data):
            for name, arr in zip(names, sess.run(None, b), strict=True):
                if name in self._act_outputs:
                    got.setdefault(name, []).append(np.asarray(arr, dtype=np.float32))
        return {k: np.concatenate(v, axis=0) for k, v in got.items()}

    def local_errors(self, items: Sequence[tuple[str, Option]], data: Dataset) -> dict[tuple[str, str], float]:
        """||Δy||² / ||y||² of each layer's own output under each option, on the layer's real inputs over
        ``data`` (each layer's nodes run alone: the compute node, its weight Transpose and bias Add)."""
        import torch

        from devicefit.compressor.fake import fake_act_quant
        from devicefit.kernels.ort_session import cpu_session

        acts = self.capture(data)
        if not self.ranges:
            self.collect_ranges(data)
        out: dict[tuple[str, str], float] = {}
        sessions: dict[str, tuple[Any, list[str], list[str]]] = {}
        for layer, opt in items:
            if layer not in sessions:
                model, xs, ys = self._layer_model(layer)
                sessions[layer] = (cpu_session(model.SerializeToString()), xs, ys)
            sess, xs, ys = sessions[layer]
            base = {x: acts[x] for x in xs}
            y0 = sess.run(ys, base)
            extra = {w: v for w, v in self.feeds_for({layer: opt}).items() if not w.startswith("__fake_")}
            act = next((op.activation for t in (opt.prune, opt.lowrank, opt.quant) if t is not None
                        for op in [t.fake()] if op is not None and op.activation), None)
            feeds = dict(base)
            if act is not None:
                for x in xs:
                    xt = torch.from_numpy(acts[x])
                    lo, hi = (float(xt.min()), float(xt.max())) if act == "dynamic" else self.ranges[layer]
                    feeds[x] = fake_act_quant(xt, lo, hi).numpy().astype(np.float32)
            y = sess.run(ys, {**feeds, **extra})
            num = sum(float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).sum()) for a, b in zip(y, y0, strict=True))
            den = sum(float((np.asarray(b, np.float64) ** 2).sum()) for b in y0)
            out[(layer, opt.label)] = num / max(den, 1e-30)
        return out

    def _layer_model(self, layer: str) -> tuple[Any, list[str], list[str]]:
        """A model of ``layer``'s nodes alone: (model, its activation inputs, its outputs)."""
        from onnx import TensorProto, helper

        from devicefit.compressor.quant import graph as G

        nodes = G.node_by_name(self._orig)
        inits = G.initializers(self._orig)
        keep: list[Any] = []
        xs: list[str] = []
        ys: list[str] = []
        used: set[str] = set()
        for ln in self._lmap.nodes[layer]:
            for name in (ln.transpose, ln.node, ln.bias_add):
                if name is not None and name not in used:
                    used.add(name)
                    keep.append(nodes[name])
            if ln.input not in xs:
                xs.append(ln.input)
            ys.append(ln.output)
        consts = sorted({i for n in keep for i in n.input if i in inits})
        weights = {w for w, _ in self.weights[layer]}
        graph = helper.make_graph(
            keep, f"layer-{layer}",
            [*(helper.make_tensor_value_info(x, TensorProto.FLOAT, None) for x in xs),
             *(helper.make_tensor_value_info(w, inits[w].data_type, list(inits[w].dims)) for w in consts if w in weights)],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, None) for y in ys],
            initializer=[inits[c] for c in consts],
        )
        model = helper.make_model(graph, opset_imports=list(self._orig.opset_import), ir_version=self._orig.ir_version)
        return model, xs, ys

    def feeds_for(self, choices: Mapping[str, Option]) -> dict[str, np.ndarray]:
        """Extra feeds that fake-compress each layer of ``choices`` with its option (none: the fp32 graph)."""
        import torch

        out: dict[str, np.ndarray] = {}
        for layer, option in choices.items():
            i = self.layers.index(layer)
            act: str | None = None
            for tech in (option.prune, option.lowrank, option.quant):
                if tech is None or (op := tech.fake()) is None:
                    continue
                if op.weight is not None:
                    for w, layout in self.weights[layer]:
                        # the transform takes torch's layout ([out, in, …]); ``layout`` is the initializer's
                        arr = self._fp32[w]
                        tw = torch.from_numpy(np.ascontiguousarray(arr.T if layout == "kn" else arr))
                        new = op.weight(tw, tech, None).detach().cpu().numpy().astype(np.float32)
                        out[w] = np.ascontiguousarray(new.T if layout == "kn" else new)
                act = op.activation or act
            if act is not None:
                lo, hi = self.ranges.get(layer, (0.0, 0.0))
                out[f"__fake_mode_{i}"] = np.array(_MODES[act], dtype=np.float32)
                out[f"__fake_lo_{i}"] = np.array(lo, dtype=np.float32)
                out[f"__fake_hi_{i}"] = np.array(hi, dtype=np.float32)
        return out

    def run(self, data: Dataset, extra: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """The first output over ``data`` (in batches) with ``extra`` feeds (:meth:`feeds_for`)."""
        outs = [np.asarray(self.session.run(None, {**b, **(extra or {})})[0]) for b in self._batches(data)]
        return np.concatenate(outs, axis=0)


def _fake_quant_nodes(x: str, p: str, mode: str, lo: str, hi: str) -> list[Any]:
    """Nodes computing ``p + "out"`` = x, or x fake-quantized (``fake_act_quant``) when ``mode`` > 0: with x's own
    range when ``mode`` == 1, with [``lo``, ``hi``] otherwise."""
    from onnx import helper

    c = "__fake_c_"
    n = helper.make_node
    return [
        n("ReduceMin", [x], [p + "dlo"], keepdims=0, name=p + "rmin"),
        n("ReduceMax", [x], [p + "dhi"], keepdims=0, name=p + "rmax"),
        n("Equal", [mode, c + "one"], [p + "isdyn"], name=p + "isdyn"),
        n("Where", [p + "isdyn", p + "dlo", lo], [p + "lo0"], name=p + "wlo"),
        n("Where", [p + "isdyn", p + "dhi", hi], [p + "hi0"], name=p + "whi"),
        n("Min", [p + "lo0", c + "zero"], [p + "lo"], name=p + "lo"),
        n("Max", [p + "hi0", c + "zero"], [p + "hi"], name=p + "hi"),
        n("Sub", [p + "hi", p + "lo"], [p + "span"], name=p + "span"),
        n("Max", [p + "span", c + "eps"], [p + "span1"], name=p + "span1"),
        n("Div", [p + "span1", c + "q"], [p + "scale"], name=p + "scale"),
        n("Neg", [p + "lo"], [p + "nlo"], name=p + "nlo"),
        n("Div", [p + "nlo", p + "scale"], [p + "zp0"], name=p + "zp0"),
        n("Round", [p + "zp0"], [p + "zp"], name=p + "zp"),
        n("Div", [x, p + "scale"], [p + "xs"], name=p + "xs"),
        n("Round", [p + "xs"], [p + "xr"], name=p + "xr"),
        n("Add", [p + "xr", p + "zp"], [p + "xz"], name=p + "xz"),
        n("Clip", [p + "xz", c + "zero", c + "q"], [p + "xc"], name=p + "xc"),
        n("Sub", [p + "xc", p + "zp"], [p + "xq"], name=p + "xq"),
        n("Mul", [p + "xq", p + "scale"], [p + "fq"], name=p + "fq"),
        n("Greater", [mode, c + "half"], [p + "on"], name=p + "on"),
        n("Where", [p + "on", p + "fq", x], [p + "out"], name=p + "out"),
    ]


class OnnxJointDrop:
    """The metric drop of a whole plan, every layer's fake technique applied at once on the sensitivity slice
    (the graph-side :class:`.sensitivity.JointDrop`)."""

    def __init__(self, graph: FakeGraph, space: SearchSpace, data: Dataset, *, metric: str) -> None:
        self.graph, self.space, self.data, self.metric = graph, space, data, metric
        self._ref: np.ndarray | None = None
        self.calls = 0
        self.seconds = 0.0

    def __call__(self, labels: dict[str, str]) -> float:
        t0 = time.perf_counter()
        if self._ref is None:
            self._ref = self.graph.run(self.data)
            if not self.graph.ranges:
                self.graph.collect_ranges(self.data)
        chosen = {layer: self.space.option(layer, lab) for layer, lab in labels.items()
                  if layer in self.graph.layers and self.space.option(layer, lab).parts()}
        out = self.graph.run(self.data, self.graph.feeds_for(chosen))
        res = score(self.metric, self._ref, out, self.data.labels)
        self.calls += 1
        self.seconds += time.perf_counter() - t0
        return float(res.drop) if np.isfinite(res.drop) else 1.0


def measure_onnx_sensitivity(
    graph: FakeGraph,
    space: SearchSpace,
    data: Dataset,
    *,
    metric: str,
    model_hash: str,
    cache_dir: str | Path | None = None,
    max_full: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SensitivityTable:
    """Drop of ``metric`` on ``data`` for every single-technique option of every layer of ``space`` (the table
    :func:`.sensitivity.measure_sensitivity` gives for a torch module; its cache file format too). ``max_full``:
    at most this many full-model evaluations; beyond, one per layer and option group, the others estimated from
    local output errors (:func:`.sensitivity.hybrid_refs`, counted in ``SensitivityTable.estimated``)."""
    def prepare() -> None:
        if not graph.ranges:
            graph.collect_ranges(data)

    return sweep_options(
        space, data, ref=graph.run(data), metric=metric, model_hash=model_hash, cache_dir=cache_dir,
        max_full=max_full, progress=progress, prepare=prepare, local_errors=graph.local_errors,
        evaluate=lambda layer, opt: graph.run(data, graph.feeds_for({layer: opt})),
    )


__all__ = ["FakeGraph", "OnnxJointDrop", "measure_onnx_sensitivity"]
