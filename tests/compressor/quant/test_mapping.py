"""Torch layer names → ONNX nodes on a real dynamo export (Conv, Gemm, MatMul + Add, MatMul without bias)."""

from __future__ import annotations

import numpy as np
import onnx
from quant_helpers import LAYERS, TinyCase

from devicefit.compressor.quant import graph as G
from devicefit.compressor.quant.mapping import canonicalize, layer_of_initializer, map_layers


def test_every_layer_maps_to_its_node(tiny: TinyCase) -> None:
    model = onnx.load(str(tiny.onnx))
    lmap = map_layers(model, [*LAYERS, "not.a.layer"])
    assert sorted(lmap.nodes) == sorted(LAYERS)
    assert lmap.unmapped == ["not.a.layer"]
    kinds = {k: (v[0].op_type, v[0].layout) for k, v in lmap.nodes.items()}
    assert kinds == {"conv": ("Conv", "conv"), "fc1": ("Gemm", "nk"), "fc2": ("MatMul", "kn"),
                     "fc3": ("MatMul", "kn"), "head": ("Gemm", "nk")}
    fc2 = lmap.first("fc2")
    assert fc2.bias is not None and fc2.bias_add is not None  # MatMul + Add(bias) pattern
    assert lmap.first("fc3").bias is None and lmap.first("fc3").bias_add is None
    # the [K, N] weight seen by the graph is the torch weight transposed
    for name in ("fc1", "fc2", "fc3", "head"):
        w = tiny.module.get_submodule(name).weight.detach().numpy()
        np.testing.assert_array_equal(lmap.first(name).weight_kn(model), w.T)


def test_value_matching_when_names_and_metadata_are_gone(tiny: TinyCase) -> None:
    model = onnx.load(str(tiny.onnx))
    for i, t in enumerate(list(model.graph.initializer)):
        G.rename_tensor(model, t.name, f"w{i}")
    for n in model.graph.node:
        del n.metadata_props[:]
    assert map_layers(model, LAYERS).unmapped == LAYERS  # nothing tells the names any more ...
    lmap = map_layers(model, LAYERS, module=tiny.module)  # ... except the weights' values
    assert sorted(lmap.nodes) == sorted(LAYERS) and lmap.unmapped == []


def test_discovery_without_layer_names_and_canonical_weight_names(tiny: TinyCase) -> None:
    model = onnx.load(str(tiny.onnx))
    lmap = canonicalize(model, map_layers(model, None))
    assert sorted(lmap.nodes) == sorted(LAYERS)
    inits = set(G.initializers(model))
    for layer, lns in lmap.nodes.items():
        assert lns[0].weight in inits
        assert layer_of_initializer(lns[0].weight + "_quantized", list(lmap.nodes)) == layer


def test_transposed_weight_is_folded(tiny: TinyCase) -> None:
    """A ``weight → Transpose → MatMul`` pattern (other exporters) becomes a plain [K, N] initializer."""
    k, n = 6, 4
    w = np.arange(k * n, dtype=np.float32).reshape(n, k)
    g = onnx.helper.make_graph(
        [onnx.helper.make_node("Transpose", ["lin.weight"], ["wt"], perm=[1, 0], name="t"),
         onnx.helper.make_node("MatMul", ["x", "wt"], ["y"], name="mm")],
        "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, k])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, n])],
        [onnx.numpy_helper.from_array(w, "lin.weight")],
    )
    model = onnx.helper.make_model(g)
    lmap = map_layers(model, ["lin"])
    assert lmap.first("lin").layout == "nk" and lmap.first("lin").transpose == "t"
    lmap = canonicalize(model, lmap)
    assert [x.op_type for x in model.graph.node] == ["MatMul"]
    np.testing.assert_array_equal(lmap.first("lin").weight_kn(model), w.T)
