"""Map onnxruntime per-node times back onto torch layers.

The agent reports per-node kernel times by the node names of the *optimized* graph onnxruntime runs. We
rebuild that graph on the host (same optimization level, ``optimized_model_filepath``) and attribute each
node to the torch layer whose weight initializer it reads (``encoder.layer.0.attention.self.query.weight``,
``…weight_quantized``, ``fc.0.weight`` for a factorized ``fc`` …, longest matching layer-name prefix),
following constant-only producers (DequantizeLinear of a weight, Transpose) two hops back. Activation
quantizers (DynamicQuantizeLinear / QuantizeLinear) count towards the layers that consume them,
DequantizeLinear towards the layer that produced its input, the Cast / Mul / Add chain that dequantizes an
integer layer's int32 output (ConvInteger, MatMulInteger) towards that layer. Everything else is ``other`` (norms, softmax,
residual adds, session overhead).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_NORM = re.compile(r"[^0-9a-zA-Z]+")
_TO_CONSUMER = frozenset({"DynamicQuantizeLinear", "QuantizeLinear", "MatMulIntegerToFloat"})
_TO_PRODUCER = frozenset({"DequantizeLinear"})
#: ops that may carry a layer's bias only (a norm that swallowed a bias stays ``other``)
_BIAS_OPS = frozenset({"Add", "BiasGelu", "FastGelu", "Gelu", "Relu", "Clip", "BiasAdd"})
#: layer ops whose output is an int32 accumulator: the Cast / Mul (scales) / Add (bias) chain that turns it back
#: into float is the layer's own work (onnxruntime's dynamic int8 Conv is ConvInteger → Cast → Mul → Add)
_INTEGER_OUT = frozenset({"ConvInteger", "MatMulInteger"})
_DEQUANT_TAIL = frozenset({"Cast", "Mul", "Add"})
#: ops that are the layer itself when only the exporter's scope metadata links them
_LAYER_OPS = frozenset({"MatMul", "Gemm", "Conv", "FusedConv", "FusedMatMul", "MatMulInteger", "DynamicQuantizeMatMul",
                        "QLinearMatMul", "QLinearConv", "ConvInteger", "MatMulNBits", "QGemm", "GRU", "LSTM",
                        "DynamicQuantizeLSTM"})


def _norm(name: str) -> str:
    return _NORM.sub("_", name).strip("_").lower()


class _Matcher:
    """Longest layer-name prefix of an initializer name, on ``.``/``_`` boundaries.

    ``aliases`` maps other tensor names (the exporter's ``val_12`` for a folded, transposed weight) to layers.
    """

    def __init__(self, layers: Iterable[str], aliases: Mapping[str, str] | None = None) -> None:
        table = {_norm(x): x for x in layers}
        table.update({_norm(k): v for k, v in (aliases or {}).items()})
        self._layers = sorted(table.items(), key=lambda kv: -len(kv[0]))

    def __call__(self, tensor: str) -> str | None:
        t = _norm(tensor)
        # dynamo sometimes prefixes parameters with p_ / the module path with an underscore
        cands = (t, t[2:]) if t.startswith("p_") else (t,)
        for cand in cands:
            for key, layer in self._layers:
                if cand == key or (cand.startswith(key) and cand[len(key)] == "_"):
                    return layer
        return None


@dataclass(frozen=True)
class NodeMap:
    """node name -> layer name (nodes not listed count as ``other``)."""

    layer_of: Mapping[str, str]
    #: nodes whose time is split across several layers: node -> layers
    shared: Mapping[str, tuple[str, ...]]

    def split(self, per_node: Iterable[Any]) -> tuple[dict[str, float], float, float]:
        """(layer -> ms, other ms, total ms) from NodeTime-like items (``name``, ``mean_ms``)."""
        layers: dict[str, float] = defaultdict(float)
        other = 0.0
        total = 0.0
        for n in per_node:
            name = n["name"] if isinstance(n, Mapping) else n.name
            ms = float(n["mean_ms"] if isinstance(n, Mapping) else n.mean_ms)
            total += ms
            if name in self.layer_of:
                layers[self.layer_of[name]] += ms
            elif name in self.shared:
                share = self.shared[name]
                for layer in share:
                    layers[layer] += ms / len(share)
            else:
                other += ms
        return dict(layers), other, total

    def to_dict(self) -> dict[str, Any]:
        return {"layer_of": dict(self.layer_of), "shared": {k: list(v) for k, v in self.shared.items()}}


def optimized_graph(path: str | Path, *, level: str = "all") -> Any:
    """The graph onnxruntime actually runs (CPU EP) for ``path``, as an ``onnx.ModelProto``."""
    from devicefit.kernels.ort_session import optimized_model

    return optimized_model(path, optimization=level)


def _scope_layer(node: Any, match: _Matcher) -> str | None:
    """Layer from the dynamo exporter's ``pkg.torch.onnx.name_scopes`` metadata, when the node kept it."""
    for prop in getattr(node, "metadata_props", ()):
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = [s.strip(" '\"") for s in prop.value.strip("[]").split(",")]
            path = ".".join(s for s in scopes[:-1] if s)
            return match(path) if path else None
    return None


def _node_alias(name: str, aliases: Mapping[str, str]) -> str | None:
    """Layer of a node renamed by a later pass (``node_MatMul_1`` -> ``node_MatMul_1_quant``)."""
    if name in aliases:
        return aliases[name]
    best = max((k for k in aliases if name.startswith(k + "_")), key=len, default=None)
    return aliases[best] if best else None


def scope_aliases(model: Any, layers: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(initializer -> layer, node name -> layer) from the exporter's scope metadata of an unoptimized model."""
    match = _Matcher(layers)
    inits = {i.name for i in model.graph.initializer}
    tensors: dict[str, str] = {}
    nodes: dict[str, str] = {}
    for node in model.graph.node:
        layer = _scope_layer(node, match)
        if layer is None:
            continue
        if node.op_type in _LAYER_OPS:
            nodes[node.name] = layer
        for i in node.input:
            if i in inits and match(i) is None:
                tensors[i] = layer
    return tensors, nodes


def weight_aliases(model: Any, layers: Sequence[str]) -> dict[str, str]:
    """node name -> layer for the layer ops of an unoptimized model, by the weight they read (directly or
    through a DequantizeLinear of a constant). onnxruntime keeps a node's name as the prefix of what it
    rewrites it into — including a float Conv between quantized activations that it quantizes itself
    (``node_Conv_20`` -> ``node_Conv_20_token_6``, a QLinearConv reading the new ``node_Conv_20_weight_q``)."""
    match = _Matcher(layers)
    inits = {i.name for i in model.graph.initializer}
    dq_of = {o: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input for o in n.output}
    out: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type not in _LAYER_OPS:
            continue
        for i in node.input[1:]:
            w = dq_of.get(i, i)
            layer = match(w) if w in inits else None
            if layer is not None and not _norm(w)[len(_norm(layer)):].startswith("_bias"):
                out[node.name] = layer
                break
    return out


#: kernel op type -> the dtype class it computes in (ops not listed say nothing)
KERNEL_DTYPE: dict[str, str] = {
    "QLinearConv": "int8", "QGemm": "int8", "QLinearMatMul": "int8",
    "ConvInteger": "int8dyn", "MatMulInteger": "int8dyn", "DynamicQuantizeMatMul": "int8dyn",
    "MatMulIntegerToFloat": "int8dyn",
    "MatMulNBits": "int4w",
    "Conv": "fp32", "FusedConv": "fp32", "Gemm": "fp32", "FusedGemm": "fp32", "MatMul": "fp32", "FusedMatMul": "fp32",
}


def effective_dtypes(node_map: NodeMap, per_node: Iterable[Any]) -> dict[str, str]:
    """layer -> the dtype class its kernels actually ran in (from the op types of the nodes mapped to it), for
    layers whose kernels agree on one. onnxruntime can run a layer in another class than the plan asked: a
    float Conv between statically quantized activations becomes a QLinearConv."""
    seen: dict[str, set[str]] = defaultdict(set)
    for n in per_node:
        name = n["name"] if isinstance(n, Mapping) else n.name
        op = str(n["op_type"] if isinstance(n, Mapping) else n.op_type)
        layer = node_map.layer_of.get(name)
        if layer is not None and op in KERNEL_DTYPE:
            seen[layer].add(KERNEL_DTYPE[op])
    out = {}
    for layer, classes in seen.items():
        ints = classes - {"fp32"}
        if len(ints) == 1:
            out[layer] = next(iter(ints))
        elif not ints:
            out[layer] = "fp32"
    return out


def map_nodes(model: Any, layers: Sequence[str], *, sources: Sequence[Any] = ()) -> NodeMap:
    """Attribute the nodes of an ONNX model (``onnx.ModelProto``, usually onnxruntime's optimized graph) to
    ``layers`` (torch names). ``sources``: unoptimized models whose scope metadata names folded weights."""
    graph = model.graph
    tensor_alias: dict[str, str] = {}
    node_alias: dict[str, str] = {}
    for src in sources:
        t, n = scope_aliases(src, layers)
        tensor_alias.update(t)
        node_alias.update({**weight_aliases(src, layers), **n})
    match = _Matcher(layers, tensor_alias)
    consts = {i.name for i in graph.initializer}
    consts.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)
    producer: dict[str, Any] = {}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for o in node.output:
            producer[o] = node
        for i in node.input:
            consumers[i].append(node)

    def const_layer(tensor: str, depth: int) -> tuple[str, bool] | None:
        """(layer, is_bias) of a constant input, following constant-only producers ``depth`` hops."""
        if tensor in consts:
            layer = match(tensor)
            if layer is None:
                return None
            return layer, _norm(tensor)[len(_norm(layer)):].startswith("_bias")
        node = producer.get(tensor)
        if node is None or depth == 0:
            return None
        if all((not i) or (i in consts) for i in node.input):
            for i in node.input:
                hit = const_layer(i, depth - 1) if i else None
                if hit:
                    return hit
        return None

    layer_of: dict[str, str] = {}
    for node in graph.node:
        hits = [h for i in node.input if i for h in [const_layer(i, 2)] if h]
        weights = [layer for layer, is_bias in hits if not is_bias]
        if weights:
            layer_of[node.name] = weights[0]
        elif hits and node.op_type in _BIAS_OPS | _LAYER_OPS:  # weight renamed by a layout pass (Conv NCHWc)
            layer_of[node.name] = hits[0][0]
        elif not hits and node.op_type in _LAYER_OPS:
            scoped = _scope_layer(node, match) or _node_alias(node.name, node_alias)
            if scoped:
                layer_of[node.name] = scoped
    tail: set[str] = set()  # nodes of an integer layer's dequantization chain (graph order is topological)
    for node in graph.node:
        if node.name in layer_of or node.op_type not in _DEQUANT_TAIL or not node.input:
            continue
        src = producer.get(node.input[0])
        if src is not None and src.name in layer_of and (src.op_type in _INTEGER_OUT or src.name in tail):
            layer_of[node.name] = layer_of[src.name]
            tail.add(node.name)
    shared: dict[str, tuple[str, ...]] = {}
    for node in graph.node:
        if node.name in layer_of:
            continue
        if node.op_type in _TO_CONSUMER:
            targets = sorted({layer_of[c.name] for o in node.output for c in consumers[o] if c.name in layer_of})
        elif node.op_type in _TO_PRODUCER:
            targets = sorted({layer_of[producer[i].name] for i in node.input[:1] if i in producer and producer[i].name in layer_of})
        else:
            continue
        if len(targets) == 1:
            layer_of[node.name] = targets[0]
        elif targets:
            shared[node.name] = tuple(targets)
    return NodeMap(layer_of, shared)


def node_map_for(
    path: str | Path, layers: Sequence[str], *, level: str = "all", reference: str | Path | None = None
) -> NodeMap:
    """:func:`map_nodes` on the optimized graph onnxruntime builds for ``path``; the file itself and
    ``reference`` (e.g. the fp32 export it was quantized from) supply scope metadata."""
    import onnx

    sources = [onnx.load(str(path), load_external_data=False)]
    if reference is not None and Path(reference).is_file():
        sources.append(onnx.load(str(reference), load_external_data=False))
    return map_nodes(optimized_graph(path, level=level), layers, sources=sources)
