"""Map torch layer names (``model.named_modules()`` of Linear / Conv) onto the ONNX nodes computing them.

The dynamo exporter keeps a Linear/Conv weight as an initializer named like the parameter
(``fc1.weight``, consumed by ``Gemm`` with ``transB=1`` or by ``Conv``) — except for Linears applied to
3-D inputs, which become ``MatMul`` on a pre-transposed ``[K, N]`` initializer with a generated name
(``val_40``). Every node carries ``pkg.torch.onnx.name_scopes`` metadata listing the module path, so a
layer is found, in order of preference, by (1) the initializer name ``<layer>.weight``, (2) the node's
name-scope metadata, (3) the weight values compared to the torch module's parameters (when a module is
given; this also covers graphs whose metadata was stripped). ``canonicalize`` then renames each mapped
weight initializer to ``<layer>.weight`` (``<layer>.weight.T`` when stored ``[K, N]``) so every tensor the
quantizers derive from it (``…_quantized``, ``…_scale``) can be traced back to the layer in the
optimized graph.

Recurrent layers (``nn.GRU`` / ``nn.LSTM``, asked for by name) map onto their ONNX ``GRU`` / ``LSTM`` node(s),
one per stacked layer, found by name-scope metadata or by the weight names the export gives them
(``<layer>.weight_ih_l<k>``, :func:`devicefit.compressor.export.fold_recurrent_weights`). Each node gives two
:class:`LayerNode` entries, one per weight (W, with the bias B; and R), layout ``rnn`` (``[directions,
gates·hidden, inputs]``). Discovery without names (``layer_names=None``, an ONNX-only model) stays
MatMul / Gemm / Conv.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from devicefit.compressor.quant import graph as G

COMPUTE_OPS = ("MatMul", "Gemm", "Conv")
#: recurrent compute ops → the layer kind (``layer_types`` of a technique)
RECURRENT_OPS = {"GRU": "gru", "LSTM": "lstm"}
_RNN_WEIGHT = re.compile(r"^(?P<layer>.+)\.(weight_ih|weight_hh)_l\d+$")


@dataclass(frozen=True)
class LayerNode:
    """One ONNX compute node of a torch layer."""

    layer: str
    node: str  #: compute node name
    op_type: str  #: MatMul | Gemm | Conv
    weight: str  #: initializer holding the weight
    layout: str  #: "kn": MatMul B [K, N]; "nk": [N, K] (Gemm transB=1 or a Transpose node); "conv": [O, I/g, kh, kw];
    #: "rnn": a GRU / LSTM W or R [directions, gates*hidden, inputs]
    input: str  #: activation tensor read by the node
    output: str  #: output tensor (after the bias Add when there is one)
    bias: str | None = None  #: bias initializer (Gemm/Conv input 2, or the Add's constant)
    bias_add: str | None = None  #: the separate bias ``Add`` node (MatMul + Add pattern)
    transpose: str | None = None  #: Transpose node between the weight and the MatMul

    @property
    def is_linear(self) -> bool:
        return self.op_type in ("MatMul", "Gemm")

    @property
    def kind(self) -> str:
        """The layer kind techniques declare (``layer_types``): ``linear``, ``conv``, ``gru`` or ``lstm``."""
        if self.op_type in RECURRENT_OPS:
            return RECURRENT_OPS[self.op_type]
        return "linear" if self.is_linear else "conv"

    def weight_kn(self, model: onnx.ModelProto) -> np.ndarray:
        """The Linear weight as ``[K, N]`` (in_features x out_features) float32."""
        w = G.to_array(G.initializers(model)[self.weight]).astype(np.float32)
        if self.op_type == "Conv":
            raise ValueError(f"{self.layer} is a Conv; it has no [K, N] weight")
        return np.ascontiguousarray(w.T if self.layout == "nk" else w)

    def bias_array(self, model: onnx.ModelProto) -> np.ndarray | None:
        if self.bias is None:
            return None
        return G.to_array(G.initializers(model)[self.bias]).astype(np.float32)


@dataclass
class LayerMap:
    """Result of :func:`map_layers`: layer → nodes, plus the plan layers that map to nothing."""

    nodes: dict[str, list[LayerNode]]
    unmapped: list[str]

    def node_names(self) -> dict[str, list[str]]:
        return {layer: [ln.node for ln in lns] for layer, lns in self.nodes.items()}

    def first(self, layer: str) -> LayerNode:
        return self.nodes[layer][0]


def scope_layer(node: onnx.NodeProto) -> str | None:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return None
            if isinstance(scopes, list) and len(scopes) >= 2 and scopes[-2]:
                return str(scopes[-2])
    return None


def _module_weights(module: Any) -> dict[tuple[int, ...], list[tuple[str, np.ndarray]]]:
    """Linear/Conv weights of a torch module by shape (for value matching)."""
    import torch

    out: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = {}
    for name, m in module.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)):
            w = m.weight.detach().float().cpu().numpy()
            out.setdefault(tuple(w.shape), []).append((name, w))
    return out


def _value_match(w: np.ndarray, layout: str, by_shape: dict[tuple[int, ...], list[tuple[str, np.ndarray]]]) -> str | None:
    torch_w = w.T if layout == "kn" else w
    for name, cand in by_shape.get(tuple(torch_w.shape), []):
        if np.allclose(cand, torch_w, rtol=1e-5, atol=1e-7):
            return name
    return None


def _compute_nodes(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str, str, str | None]]:
    """(node, weight initializer, layout, transpose node name) for every MatMul/Gemm/Conv with a constant weight."""
    out = []
    inits = G.initializers(model)
    for node in model.graph.node:
        if node.op_type not in COMPUTE_OPS or len(node.input) < 2:
            continue
        if node.input[0] in inits:  # constant on the activation side: not a layer
            continue
        src = G.const_source(model, node.input[1], through=("Transpose",))
        if src is None:
            continue
        init, chain = src
        ndim = len(inits[init].dims)
        if node.op_type == "Conv":
            layout = "conv"
        elif node.op_type == "Gemm":
            if ndim != 2:
                continue
            trans = bool(G.attr(node, "transB", 0)) ^ (len(chain) % 2 == 1)
            layout = "nk" if trans else "kn"
        else:
            if ndim != 2:
                continue
            layout = "nk" if len(chain) % 2 == 1 else "kn"
        out.append((node, init, layout, chain[0].name if chain else None))
    return out


def _bias(model: onnx.ModelProto, node: onnx.NodeProto, n_out: int) -> tuple[str | None, str | None, str]:
    """(bias initializer, bias Add node, output tensor after the bias)."""
    inits = G.initializers(model)
    if node.op_type in ("Gemm", "Conv"):
        b = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
        return b, None, node.output[0]
    cons = G.consumers(model).get(node.output[0], [])
    if len(cons) == 1 and cons[0].op_type == "Add":
        add = cons[0]
        other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        if other in inits and int(np.prod(inits[other].dims)) == n_out and len(inits[other].dims) == 1:
            return other, add.name, add.output[0]
    return None, None, node.output[0]


def map_layers(model: onnx.ModelProto, layer_names: list[str] | None = None, module: Any = None) -> LayerMap:
    """Find the compute node(s) of each layer. With ``layer_names=None`` every MatMul/Gemm/Conv with a
    constant weight becomes a layer (named from its weight / scope, else the node name)."""
    G.ensure_node_names(model)
    inits = G.initializers(model)
    wanted = set(layer_names) if layer_names is not None else None
    by_shape = _module_weights(module) if module is not None else {}
    nodes: dict[str, list[LayerNode]] = {}
    for node, init, layout, tr in _compute_nodes(model):
        candidates = []
        for suffix in (".weight", ".weight.T"):
            if init.endswith(suffix):
                candidates.append(init[: -len(suffix)])
        scope = scope_layer(node)
        if scope:
            candidates.append(scope)
        if by_shape:
            vm = _value_match(G.to_array(inits[init]), layout, by_shape)
            if vm:
                candidates.append(vm)
        if wanted is not None:
            layer = next((c for c in candidates if c in wanted), None)
            if layer is None:
                continue
        else:
            layer = candidates[0] if candidates else node.name
        w_shape = list(inits[init].dims)
        n_out = w_shape[0] if layout in ("nk", "conv") else w_shape[1]
        bias, bias_add, output = _bias(model, node, n_out)
        ln = LayerNode(layer, node.name, node.op_type, init, layout, node.input[0], output, bias, bias_add, tr)
        nodes.setdefault(layer, []).append(ln)
    if wanted is not None:
        for layer, lns in _recurrent_nodes(model, wanted).items():
            nodes.setdefault(layer, []).extend(lns)
    unmapped = sorted(wanted - set(nodes)) if wanted is not None else []
    return LayerMap(nodes, unmapped)


def _recurrent_nodes(model: onnx.ModelProto, wanted: set[str]) -> dict[str, list[LayerNode]]:
    """W and R entries of every GRU / LSTM node with constant weights whose layer is ``wanted``."""
    inits = G.initializers(model)
    out: dict[str, list[LayerNode]] = {}
    for node in model.graph.node:
        if node.op_type not in RECURRENT_OPS or len(node.input) < 3:
            continue
        w, r = node.input[1], node.input[2]
        if w not in inits or r not in inits:
            continue
        candidates = [m.group("layer") for m in (_RNN_WEIGHT.match(w),) if m]
        scope = scope_layer(node)
        if scope:
            candidates.append(scope)
        layer = next((c for c in candidates if c in wanted), None)
        if layer is None:
            continue
        b = node.input[3] if len(node.input) > 3 and node.input[3] in inits else None
        y = next((o for o in node.output if o), "")
        out.setdefault(layer, []).extend([
            LayerNode(layer, node.name, node.op_type, w, "rnn", node.input[0], y, b),
            LayerNode(layer, node.name, node.op_type, r, "rnn", node.input[0], y),
        ])
    return out


def canonical_weight_name(ln: LayerNode) -> str:
    if ln.layout == "rnn":  # named by the export (``<layer>.weight_ih_l0``); else kept traceable to the layer
        return ln.weight if ln.weight.startswith(f"{ln.layer}.weight_") else f"{ln.layer}.weight_{ln.weight}"
    return f"{ln.layer}.weight.T" if ln.layout == "kn" else f"{ln.layer}.weight"


def _fold_transpose(model: onnx.ModelProto, ln: LayerNode) -> LayerNode:
    """Replace ``initializer → Transpose → MatMul`` by a pre-transposed ``[K, N]`` initializer."""
    if ln.transpose is None or ln.op_type != "MatMul":
        return ln
    tr = G.node_by_name(model)[ln.transpose]
    if len(G.consumers(model).get(tr.output[0], [])) != 1:
        return ln
    w = G.to_array(G.initializers(model)[ln.weight])
    new = f"{ln.weight}__kn"
    G.set_initializer(model, new, np.ascontiguousarray(w.T))
    for n in model.graph.node:
        if n.name == ln.node:
            n.input[1] = new
    model.graph.node.remove(tr)
    G.remove_unused_initializers(model)
    return LayerNode(**{**ln.__dict__, "weight": new, "layout": "kn", "transpose": None})


def canonicalize(model: onnx.ModelProto, lmap: LayerMap) -> LayerMap:
    """Fold weight Transposes and rename each mapped layer's weight initializer to its canonical name;
    returns the updated map."""
    out: dict[str, list[LayerNode]] = {}
    renamed: dict[str, str] = {}
    lmap = LayerMap({k: [_fold_transpose(model, ln) for ln in v] for k, v in lmap.nodes.items()}, lmap.unmapped)
    taken = set(G.initializers(model))
    for layer, lns in lmap.nodes.items():
        new_lns = []
        for ln in lns:
            target = canonical_weight_name(ln)
            w = ln.weight
            if w in weight_key(layer):  # already named after the layer (export restores param names)
                pass
            elif w in renamed:
                w = renamed[w]
            elif w != target and target not in taken:
                G.rename_tensor(model, w, target)
                taken.add(target)
                renamed[w] = target
                w = target
            new_lns.append(LayerNode(**{**ln.__dict__, "weight": w}))
        out[layer] = new_lns
    return LayerMap(out, lmap.unmapped)


def weight_key(layer: str) -> tuple[str, str]:
    """Initializer names derived from a layer's weight start with one of these (a recurrent layer's
    ``<layer>.weight_ih_l0`` starts with ``<layer>.weight_``)."""
    return f"{layer}.weight", f"{layer}.weight.T"


def layer_of_initializer(name: str, layers: list[str]) -> str | None:
    """The layer whose (canonical) weight ``name`` derives from (``fc1.weight_quantized`` → ``fc1``)."""
    best: str | None = None
    for layer in layers:
        for key in weight_key(layer):
            if (name == key or name.startswith(key + "_")) and (best is None or len(layer) > len(best)):
                best = layer
    return best
