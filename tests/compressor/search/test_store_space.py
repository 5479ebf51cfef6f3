"""Measurement store round trip + reuse; search space built from the technique registry."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from devicefit.compressor.latency import LayerSpec, Measurement, MeasurementStore
from devicefit.compressor.search.space import SpaceConfig, build_space
from devicefit.compressor.techniques import TECHNIQUES, Int4WeightOnly, Int8Dynamic
from devicefit.errors import UserInputError


def test_store_round_trip_and_reuse(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    store = MeasurementStore(path)
    m = Measurement(device_id="pi", model_hash="mh", plan_hash="p1", p50_ms=12.5, p90_ms=13.0, mean_ms=12.7,
                    plan={"version": 1, "layers": []}, runtime="onnxruntime", runtime_versions={"onnxruntime": "1.32.0"},
                    threads=4, per_node=[{"name": "n1", "op_type": "MatMul", "mean_ms": 3.0}], per_layer={"fc": 3.0},
                    other_ms=1.5, predicted_ms=11.0, size_bytes=1234, metric_name="accuracy", metric_drop=0.004,
                    source="device:pi")
    rid = store.add(m)
    assert rid > 0 and store.count() == 1
    # a second store on the same file (another run / process) sees it
    again = MeasurementStore(path)
    got = again.find(device_id="pi", model_hash="mh", plan_hash="p1", runtime_versions={"onnxruntime": "1.32.0"}, threads=4)
    assert got is not None
    assert got.p50_ms == 12.5 and got.per_node == m.per_node and got.per_layer == {"fc": 3.0}
    assert got.plan == m.plan and got.runtime_versions == {"onnxruntime": "1.32.0"} and got.metric_drop == 0.004
    # no reuse across runtimes, thread counts, devices or plans
    assert again.find(device_id="pi", model_hash="mh", plan_hash="p1", runtime_versions={"onnxruntime": "1.20.0"}) is None
    assert again.find(device_id="pi", model_hash="mh", plan_hash="p1", threads=2) is None
    assert again.find(device_id="x", model_hash="mh", plan_hash="p1") is None
    assert again.find(device_id="pi", model_hash="mh", plan_hash="p2") is None
    # ... nor across runners: the same plan exported to TFLite is another file on another runtime
    assert again.find(device_id="pi", model_hash="mh", plan_hash="p1", runtime="litert") is None
    assert again.find(device_id="pi", model_hash="mh", plan_hash="p1", runtime="onnxruntime") is not None
    # ... nor across batch sizes (the row above was measured at batch 1)
    assert again.find(device_id="pi", model_hash="mh", plan_hash="p1", batch_size=32) is None
    again.add(Measurement(device_id="pi", model_hash="mh", plan_hash="p1", p50_ms=300.0, batch_size=32, threads=4))
    b32 = again.find(device_id="pi", model_hash="mh", plan_hash="p1", batch_size=32)
    assert b32 is not None and b32.p50_ms == 300.0
    assert again.find(device_id="pi", model_hash="mh", plan_hash="p1", threads=4).p50_ms == 12.5  # type: ignore[union-attr]
    # newest first
    again.add(Measurement(device_id="pi", model_hash="mh", plan_hash="p1", p50_ms=11.0, threads=4,
                          runtime_versions={"onnxruntime": "1.32.0"}, created_at=m.created_at + 10))
    latest = again.find(device_id="pi", model_hash="mh", plan_hash="p1")
    assert latest is not None and latest.p50_ms == 11.0
    assert len(again.query(device_id="pi")) == 3
    # with a load reference level given, only measurements made where the reference ran alike (±10%)
    again.add(Measurement(device_id="pi", model_hash="mh", plan_hash="p5", p50_ms=7.0, ref_ms=20.0, load=1.05))
    assert again.find(device_id="pi", model_hash="mh", plan_hash="p5", ref_ms=21.0).load == 1.05  # type: ignore[union-attr]
    # ... and only one made while the device ran near that level (not in a loaded minute of that session)
    again.add(Measurement(device_id="pi", model_hash="mh", plan_hash="p6", p50_ms=25.0, ref_ms=20.0, load=3.7))
    assert again.find(device_id="pi", model_hash="mh", plan_hash="p6", ref_ms=20.0) is None
    assert again.find(device_id="pi", model_hash="mh", plan_hash="p5", ref_ms=40.0) is None  # a busier machine
    assert again.find(device_id="pi", model_hash="mh", plan_hash="p1", ref_ms=20.0) is None  # level not recorded
    # calibration probes are stored but never reused for a candidate
    again.add(Measurement(device_id="pi", model_hash="mh", plan_hash="p9", p50_ms=5.0, role="probe"))
    assert again.find(device_id="pi", model_hash="mh", plan_hash="p9") is None
    assert again.query(plan_hash="p9")[0].role == "probe"
    cols = {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(measurements)")}
    assert {"device_id", "profile_id", "model_hash", "plan_hash", "runtime_versions", "threads", "p50_ms", "p90_ms",
            "mean_ms", "per_node", "predicted_ms", "created_at"} <= cols


def test_store_default_path_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVICEFIT_CACHE", str(tmp_path))
    monkeypatch.delenv("DEVICEFIT_MEASUREMENTS_DB", raising=False)
    assert MeasurementStore().path == tmp_path / "measurements.db"
    monkeypatch.setenv("DEVICEFIT_MEASUREMENTS_DB", str(tmp_path / "x.db"))
    assert MeasurementStore().path == tmp_path / "x.db"


SPECS = [LayerSpec("conv1", "conv", 100, 1000, 10, 10), LayerSpec("fc", "linear", 100, 100, 10, 10),
         LayerSpec("head", "linear", 10, 10, 10, 1)]


def test_space_from_registry_capabilities() -> None:
    space = build_space(SPECS, prunable={"conv1", "fc"})
    conv, fc, head = (space.labels(n) for n in ("conv1", "fc", "head"))
    assert conv[0] == fc[0] == head[0] == "float"
    # int4 weight-only declares layer_types=("linear",): never offered on a conv
    assert "int4_weight_only" in fc and "int4_weight_only" not in conv
    assert "int8_dynamic" in conv and "int8_static" in conv
    # channel pruning only where the dependency probe allows it; low-rank anywhere
    assert "structured@0.25" in conv and "structured@0.5+int8_dynamic" in fc
    assert not any(lab.startswith("structured") for lab in head)
    assert "lowrank@0.5+int4_weight_only" in head
    opt = space.option("fc", "structured@0.5+int4_weight_only")
    assert opt.prune is not None and opt.prune.ratio == 0.5 and isinstance(opt.quant, Int4WeightOnly)
    assert opt.parts() == ("structured@0.5", "int4_weight_only")
    # the lowrank config comes from settings (asvd needs calibration -> dropped without data)
    assert space.option("fc", "lowrank@0.5").lowrank.kind == "asvd"  # type: ignore[union-attr]
    no_calib = build_space(SPECS, has_calibration=False)
    assert all("int8_static" not in no_calib.labels(n) for n in no_calib.layers)
    assert all(not lab.startswith("lowrank") for n in no_calib.layers for lab in no_calib.labels(n))
    # a plan from labels
    plan = space.plan({"conv1": "float", "fc": "int8_dynamic", "head": "int8_static"})
    assert isinstance(plan.choice_for("fc").quant, Int8Dynamic) and plan.choice_for("conv1").is_empty()
    assert space.uniform("int4_weight_only") == {"conv1": "float", "fc": "int4_weight_only", "head": "int4_weight_only"}


def test_space_config_validates_against_registry() -> None:
    with pytest.raises(UserInputError, match="unknown quant method"):
        SpaceConfig(families={"quant": ("int3",)})
    # every quant method in the registry can be searched (on every kind it applies to, with layer_types={}: by
    # default int8_weight_only is offered on recurrent layers only)
    all_quant = tuple(m for f, m in TECHNIQUES if f == "quant")
    assert "int8_weight_only" not in build_space(SPECS, config=SpaceConfig(families={"quant": all_quant})).labels("fc")
    space = build_space(SPECS, config=SpaceConfig(families={"quant": all_quant}, layer_types={}, kernels=True))
    assert sorted(space.labels("fc")) == sorted({"float", *all_quant})  # KeepFloat's label is float: no duplicate
    cfg = SpaceConfig(ratios={"prune": (0.3,), "lowrank": (0.25, 0.75)})
    assert SpaceConfig.from_dict(cfg.to_dict()) == cfg and cfg.layer_types == {"int8_weight_only": ("gru", "lstm")}
    assert SpaceConfig.from_dict(SpaceConfig(layer_types={}).to_dict()).layer_types == {}


def test_kernel_techniques_are_offered_only_to_a_device_with_the_kernels() -> None:
    """2:4 sparse int8 and 2- / 3-bit weights run fast only in devicefit's own kernels: the default space offers them
    on Linear layers when the device reports the kernel library (``SpaceConfig.kernels``), never elsewhere."""
    kernel_methods = sorted(c.method for c in TECHNIQUES.values() if c.needs_kernels)
    assert kernel_methods == ["int8_sparse24", "lowbit_weight_only"]
    without = build_space(SPECS)
    assert not any(m in lab for n in without.layers for lab in without.labels(n) for m in kernel_methods)
    with_kernels = build_space(SPECS, config=SpaceConfig(kernels=True), prunable={"conv1", "fc"})
    for method in kernel_methods:
        assert method in with_kernels.labels("fc") and method in with_kernels.labels("head")
        assert not any(method in lab for lab in with_kernels.labels("conv1"))  # Linear layers only
    assert with_kernels.option("fc", "int8_sparse24").quant.needs_kernels  # type: ignore[union-attr]
    assert SpaceConfig.from_dict(SpaceConfig(kernels=True).to_dict()).kernels is True
    assert SpaceConfig(kernels=True).only(("quant",)).kernels is True
    # a TFLite space never offers them (they are ONNX ops)
    tfl = build_space(SPECS, config=SpaceConfig(kernels=True, format="tflite"))
    assert not any(m in lab for n in tfl.layers for lab in tfl.labels(n) for m in kernel_methods)
