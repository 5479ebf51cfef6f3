"""Small ONNX graph helpers shared by the quantization passes (no onnxruntime here)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

#: ops that only move / reinterpret a weight on its way into a compute node
PASSTHROUGH_OPS = frozenset({"Transpose", "Reshape", "Cast", "Unsqueeze", "Squeeze", "Identity", "DequantizeLinear"})


def load(path: str | Path) -> onnx.ModelProto:
    return onnx.load(str(path))


def save(model: onnx.ModelProto, path: str | Path) -> Path:
    """Save as one file (models here are < 2 GB); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(p))
    return p


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Give every node a unique, non-empty name (passes select nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        base, k = name, 1
        while name in seen:
            name, k = f"{base}__{k}", k + 1
        node.name = name
        seen.add(name)


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: n for n in model.graph.node for out in n.output if out}


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            if i:
                out[i].append(n)
    return out


def node_by_name(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in model.graph.node}


def attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def const_source(model: onnx.ModelProto, tensor: str, *, through: Iterable[str] = ("Transpose", "Reshape")) -> tuple[str, list[onnx.NodeProto]] | None:
    """The initializer a tensor is computed from through ``through`` ops only, with the ops on the way
    (nearest first); ``None`` when the tensor is not a (moved) constant."""
    inits = initializers(model)
    prod = producers(model)
    chain: list[onnx.NodeProto] = []
    allowed = set(through)
    name = tensor
    while name not in inits:
        node = prod.get(name)
        if node is None or node.op_type not in allowed:
            return None
        # Reshape's shape input is itself a constant; the data input is input 0
        chain.append(node)
        name = node.input[0]
    return name, chain


def to_array(t: onnx.TensorProto) -> np.ndarray:
    return numpy_helper.to_array(t)


def set_initializer(model: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    """Replace (or add) the initializer ``name`` with ``array``."""
    new = numpy_helper.from_array(np.ascontiguousarray(array), name)
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            model.graph.initializer[i].CopyFrom(new)
            return
    model.graph.initializer.append(new)


def rename_tensor(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename a tensor everywhere (initializers, node inputs/outputs, graph inputs/outputs, value_info)."""
    for t in model.graph.initializer:
        if t.name == old:
            t.name = new
    for n in model.graph.node:
        for i, x in enumerate(n.input):
            if x == old:
                n.input[i] = new
        for i, x in enumerate(n.output):
            if x == old:
                n.output[i] = new
    for vi in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        if vi.name == old:
            vi.name = new


def remove_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)


def remove_dead_nodes(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nobody reads (repeat until stable), then unused initializers."""
    while True:
        needed = {o.name for o in model.graph.output} | {i for n in model.graph.node for i in n.input}
        dead = [n for n in model.graph.node if not any(o in needed for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    remove_unused_initializers(model)


def opset(model: onnx.ModelProto, domain: str = "") -> int:
    for o in model.opset_import:
        if o.domain in (domain, "ai.onnx" if domain == "" else domain):
            return int(o.version)
    return 0


def ensure_opset(model: onnx.ModelProto, domain: str, version: int) -> None:
    for o in model.opset_import:
        if o.domain == domain:
            o.version = max(o.version, version)
            return
    model.opset_import.append(onnx.helper.make_opsetid(domain, version))


def topo_insert(model: onnx.ModelProto, new_nodes: list[onnx.NodeProto], *, before: onnx.NodeProto) -> None:
    """Insert ``new_nodes`` right before ``before`` (keeps a topologically sorted graph)."""
    nodes = list(model.graph.node)
    idx = next(i for i, n in enumerate(nodes) if n.name == before.name)
    del model.graph.node[:]
    model.graph.node.extend(nodes[:idx] + new_nodes + nodes[idx:])


def replace_node(model: onnx.ModelProto, old: onnx.NodeProto, new_nodes: list[onnx.NodeProto]) -> None:
    if len(new_nodes) == 1:  # in place: no copy of the node list
        target = next(n for n in model.graph.node if n.name == old.name)
        target.CopyFrom(new_nodes[0])
        return
    nodes = list(model.graph.node)
    idx = next(i for i, n in enumerate(nodes) if n.name == old.name)
    del model.graph.node[:]
    model.graph.node.extend(nodes[:idx] + new_nodes + nodes[idx + 1 :])


def file_size(path: str | Path) -> int:
    return Path(path).stat().st_size
