"""Issue #4 done-when on the real zoo models (slow): structured pruning + distillation of digits-cnn,
Wanda vs magnitude on MiniLM, ASVD vs SVD on MiniLM's FFN, structured EfficientNet-Lite0 in onnxruntime.

Latency is not asserted here (bench/prune_lowrank.py measures it); these tests assert params, MACs and
accuracy / fidelity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from devicefit.compressor.analysis import analyze
from devicefit.compressor.distill import distill
from devicefit.compressor.export import export_bundle
from devicefit.compressor.layers import layer_names
from devicefit.compressor.plan import LayerChoice, Plan
from devicefit.compressor.prune.calib import outputs
from devicefit.compressor.structural import apply_structural
from devicefit.compressor.techniques import ChannelPrune, Distill, LowRank, MagnitudePrune, WandaPrune
from devicefit.metrics import accuracy, cosine, top1_agreement
from devicefit.runtime import make_session

pytestmark = pytest.mark.slow


def _onnx_params(path: Path) -> int:
    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)


def _structural(bundle: Any, plan: Plan) -> Any:
    return apply_structural(bundle.module, plan, bundle.calib, bundle.example_inputs, bundle.input_names)


def test_digits_structured_to_55pct_macs_with_distillation(digits_bundle: Any, digits_onnx: Path, tmp_path: Path) -> None:
    b = digits_bundle
    plan = Plan.uniform(prune=ChannelPrune(0.35, importance="l2"))
    res = _structural(b, plan)
    assert {s.layer for s in res.refused} == {"fc2"}  # the classifier keeps its 10 outputs
    base, pruned = analyze(b.module, b.example_inputs), analyze(res.module, b.example_inputs)
    assert pruned.macs <= 0.55 * base.macs
    x, y = torch.from_numpy(b.eval.inputs["x"]), b.eval.labels
    with torch.no_grad():
        acc_fp32 = accuracy(b.module(x).numpy(), y)
    cfg = Distill(steps=150, lr=1e-3, batch_size=64)
    student = distill(res.module, b.module, b.calib, cfg, b.input_names, progress=False).module
    with torch.no_grad():
        acc = accuracy(student(x).numpy(), y)
    assert acc >= acc_fp32 - 0.01, (acc, acc_fp32)
    exported = export_bundle(b, tmp_path / "digits_pruned.onnx", module=student)
    assert _onnx_params(exported.path) <= 0.55 * _onnx_params(digits_onnx)
    got = make_session(exported.path, threads=1).run(None, {"x": b.eval.inputs["x"]})[0]
    assert accuracy(got, y) >= acc_fp32 - 0.01


def test_minilm_wanda_beats_magnitude_at_50pct(minilm_bundle: Any) -> None:
    b = minilm_bundle
    ev = b.eval.take(128)
    ref = outputs(b.module, ev, b.input_names).numpy()
    cos = {}
    for tech in (MagnitudePrune(0.5), WandaPrune(0.5)):
        res = _structural(b, Plan.uniform(prune=tech))
        assert len(res.applied) == len(layer_names(b.module)) == 36 and not res.refused
        q = res.module.encoder.layer[0].attention.self.query.weight
        assert abs(float((q == 0).float().mean()) - 0.5) < 1e-3
        cos[tech.method] = cosine(ref, outputs(res.module, ev, b.input_names).numpy())
    assert cos["wanda"] >= cos["magnitude"], cos
    assert cos["wanda"] > 0.8, cos


def test_efficientnet_structured_exports_and_runs_in_onnxruntime(effnet_bundle: Any, effnet_onnx: Path, tmp_path: Path) -> None:
    b = effnet_bundle
    res = _structural(b, Plan.uniform(prune=ChannelPrune(0.25, importance="l2")))
    refused = {s.layer: s.detail for s in res.refused}
    assert "model output" in refused.pop("_fc")
    # 16-channel layers: 25 % rounds back to 16 at the default channel multiple of 8
    assert all("rounds to no removal" in d for d in refused.values()) and len(refused) <= 2, refused
    m = res.module
    base, pruned = analyze(b.module, b.example_inputs), analyze(m, b.example_inputs)
    assert pruned.params < 0.75 * base.params and pruned.macs < 0.75 * base.macs
    # residual coupling: a skip-connected block still outputs as many channels as it takes in (pruned)
    skips = 0
    for blk in m._blocks:
        a = blk._block_args
        if a.id_skip and a.stride == 1 and a.input_filters == a.output_filters:
            first = blk._expand_conv if a.expand_ratio != 1 else blk._depthwise_conv
            assert blk._project_conv.out_channels == first.in_channels < a.output_filters
            skips += 1
    assert skips >= 5
    exported = export_bundle(b, tmp_path / "effnet_pruned.onnx", module=m)
    assert _onnx_params(exported.path) < 0.75 * _onnx_params(effnet_onnx)
    sess = make_session(exported.path, threads=2)
    assert [i.name for i in sess.get_inputs()] == ["x"]
    got = sess.run(None, {"x": b.eval.inputs["x"][:3]})[0]
    assert got.shape == (3, 1000) and np.all(np.isfinite(got))
    with torch.no_grad():
        want = m(torch.from_numpy(b.eval.inputs["x"][:3])).numpy()
    assert top1_agreement(want, got) == 1.0


def _ffn_layers(module: Any) -> list[str]:
    return [n for n in layer_names(module) if n.endswith("intermediate.dense") or (n.endswith("output.dense") and "attention" not in n)]


def _ffn_params(module: Any, names: list[str]) -> int:
    return sum(p.numel() for n in names for p in module.get_submodule(n).parameters())


@pytest.mark.timeout(1800)  # ~4 min on an idle 2-core host; the refit runs on ~1,500 calibration sentences
def test_minilm_ffn_asvd_beats_svd_at_equal_params_and_distillation_helps(minilm_bundle: Any) -> None:
    b = minilm_bundle
    ev = b.eval.take(128)
    ref = outputs(b.module, ev, b.input_names).numpy()
    ffn = _ffn_layers(b.module)
    assert len(ffn) == 12
    cos, modules = {}, {}
    for kind in ("svd", "asvd"):
        plan = Plan.per_layer({n: LayerChoice(lowrank=LowRank(ratio=0.5, kind=kind)) for n in ffn})
        res = _structural(b, plan)
        assert len(res.applied) == 12 and not res.refused
        assert {f"{ffn[0]}.down", f"{ffn[0]}.up"} <= {n for n, _ in res.module.named_modules()}
        ratio = _ffn_params(res.module, ffn) / _ffn_params(b.module, ffn)
        assert 0.49 <= ratio <= 0.5, ratio  # 50 % of the FFN params, within one rank
        modules[kind] = res.module
        cos[kind] = cosine(ref, outputs(res.module, ev, b.input_names).numpy())
    # activation-aware SVD (default: error-compensating refit with the Gauss-Newton output metric, closed form,
    # on the bundle's ~1,500 calibration sentences) keeps far more of the embedding than plain SVD at equal params
    assert cos["asvd"] > cos["svd"] + 0.3, cos
    # issue #4: >= 0.95 before distillation (measured 0.9513; with 256 calibration sentences it was 0.9355)
    assert cos["asvd"] >= 0.95, cos
    # a small lr: the refit student is already close (measured 0.9355 -> 0.9375; lr 1e-4 / 3e-5 found no
    # held-out improvement in 20 steps and the best checkpoint — the start — was kept)
    cfg = Distill(steps=20, lr=1e-5, batch_size=16)
    student = distill(modules["asvd"], b.module, b.calib, cfg, b.input_names, progress=False).module
    after = cosine(ref, outputs(student, ev, b.input_names).numpy())
    print(f"MiniLM FFN 50%: svd {cos['svd']:.4f}, asvd {cos['asvd']:.4f}, asvd + distill {after:.4f}")
    assert after > cos["asvd"] + 0.001, (after, cos)
