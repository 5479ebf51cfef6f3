"""The onnxruntime custom ops equal their numpy references bit for bit, on random shapes, on every SIMD
path this CPU has (forced with DEVICEFIT_KERNELS_ISA), scalar included.

Why exact: both ops accumulate integer products in int32 (exact), and their float steps (activation
scales, the epilogue, LowBit's per-group sum in group order) are the same float32 operations in the same
order in numpy and in every C path (compiled with -ffp-contract=off)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devicefit.kernels import ops, pack, reference

SETTINGS = settings(max_examples=25, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _variants(isas: list[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Force each SIMD path in turn (AVX-512 VNNI three times: with its VBMI code unpack and VBMI2 2:4 densifying,
    without VBMI, without VBMI2, as on Cascade Lake); yields the variant's name."""
    for isa in isas:
        monkeypatch.setenv("DEVICEFIT_KERNELS_ISA", isa)
        for off in ("", "NO_VBMI", "NO_VBMI2") if isa == "avx512vnni" else ("",):
            for flag in ("NO_VBMI", "NO_VBMI2"):
                monkeypatch.setenv(f"DEVICEFIT_KERNELS_{flag}", "1" if flag == off else "0")
            yield isa + (f"-{off.lower().replace('_', '')}" if off else "")
    monkeypatch.delenv("DEVICEFIT_KERNELS_NO_VBMI")
    monkeypatch.delenv("DEVICEFIT_KERNELS_NO_VBMI2")


def _outputs_by_isa(run_model: Callable[..., np.ndarray], monkeypatch: pytest.MonkeyPatch, isas: list[str],
                    model: object, x: np.ndarray) -> dict[str, np.ndarray]:
    """The model's output with each SIMD path forced in turn."""
    return {variant: run_model(model, x) for variant in _variants(isas, monkeypatch)}


def _data(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    if kind == "outliers":
        x[rng.random(shape) < 0.02] *= 50
    elif kind == "sparse_rows" and shape[0] > 1:
        x[0] = 0  # an all-zero row: scale 0, output = bias
    return x


shapes = st.tuples(st.integers(1, 9), st.integers(1, 300), st.integers(1, 40))
kinds = st.sampled_from(["normal", "outliers", "sparse_rows"])


@SETTINGS
@given(shape=shapes, kind=kinds, seed=st.integers(0, 2**31 - 1), with_bias=st.booleans())
def test_sparse24_matches_reference_on_every_isa(
    isas: list[str], run_model: Callable[..., np.ndarray], monkeypatch: pytest.MonkeyPatch,
    shape: tuple[int, int, int], kind: str, seed: int, with_bias: bool,
) -> None:
    m, k, n = shape
    rng = np.random.default_rng(seed)
    w = pack.pack_sparse24(_data(rng, (n, k), kind))
    x = _data(rng, (m, k), kind)
    bias = rng.standard_normal(n).astype(np.float32) if with_bias else None
    node, inits = ops.sparse24_node("X", "Y", w, prefix="fc", bias=bias)
    model = ops.single_op_model(node, inits, k=k, n=n)
    want = reference.sparse24_matmul(x, w, bias)
    for isa, got in _outputs_by_isa(run_model, monkeypatch, isas, model, x).items():
        np.testing.assert_array_equal(got, want, err_msg=f"isa={isa}")


@SETTINGS
@given(shape=shapes, kind=kinds, seed=st.integers(0, 2**31 - 1), bits=st.sampled_from([2, 3]),
       group=st.sampled_from([32, 64, 128, 256]), zeros=st.booleans(), with_bias=st.booleans())
def test_lowbit_matches_reference_on_every_isa(
    isas: list[str], run_model: Callable[..., np.ndarray], monkeypatch: pytest.MonkeyPatch,
    shape: tuple[int, int, int], kind: str, seed: int, bits: int, group: int, zeros: bool, with_bias: bool,
) -> None:
    m, k, n = shape
    rng = np.random.default_rng(seed)
    q, s, z = pack.quantize_lowbit_rtn(_data(rng, (n, k), kind), bits=bits, group_size=group)
    w = pack.pack_lowbit(q, s, z if zeros else None, bits=bits, group_size=group)
    x = _data(rng, (m, k), kind)
    bias = rng.standard_normal(n).astype(np.float32) if with_bias else None
    node, inits = ops.lowbit_node("X", "Y", w, prefix="fc", bias=bias)
    model = ops.single_op_model(node, inits, k=k, n=n)
    want = reference.lowbit_matmul(x, w, bias)
    for isa, got in _outputs_by_isa(run_model, monkeypatch, isas, model, x).items():
        np.testing.assert_array_equal(got, want, err_msg=f"isa={isa}")


def test_large_shapes_and_extreme_values_stay_exact(
    isas: list[str], run_model: Callable[..., np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """K = 4096 with every product at +-127*127: the int16 pair step cannot saturate, int32 is exact."""
    rng = np.random.default_rng(7)
    k, n, m = 4096, 72, 3
    w = rng.choice(np.array([-1.0, 1.0], np.float32), size=(n, k))
    w[:, 1::2] = 0  # 2:4 pattern: every other input
    x = np.where(w[:1] != 0, w[:1], 1.0).repeat(m, 0).astype(np.float32)  # same sign as the kept weights
    sw = pack.pack_sparse24(w, prune=False)
    node, inits = ops.sparse24_node("X", "Y", sw, prefix="fc")
    model = ops.single_op_model(node, inits, k=k, n=n)
    want = reference.sparse24_matmul(x, sw)
    assert want[0, 0] == pytest.approx(k / 2, rel=1e-6)  # 2048 products of 127*127, rescaled
    q, s, z = pack.quantize_lowbit_rtn(rng.standard_normal((n, k)).astype(np.float32), bits=3, group_size=256)
    q[:] = 7
    lw = pack.pack_lowbit(q, s, np.zeros_like(z), bits=3, group_size=256)
    lnode, linits = ops.lowbit_node("X", "Y", lw, prefix="fc")
    lmodel = ops.single_op_model(lnode, linits, k=k, n=n)
    xl = np.abs(x)  # every activation quantizes to +127
    lwant = reference.lowbit_matmul(xl, lw)
    for isa in isas:
        monkeypatch.setenv("DEVICEFIT_KERNELS_ISA", isa)
        np.testing.assert_array_equal(run_model(model, x), want, err_msg=f"isa={isa}")
        np.testing.assert_array_equal(run_model(lmodel, xl), lwant, err_msg=f"isa={isa}")


@pytest.mark.parametrize(("k", "n"), [(256, 13), (192, 6), (4096, 9)], ids=["pairs+tail-rows", "odd-block", "K4096"])
def test_batch_one_paths_stay_exact_at_the_extremes(
    isas: list[str], run_model: Callable[..., np.ndarray], monkeypatch: pytest.MonkeyPatch, k: int, n: int
) -> None:
    """Batch 1 has its own loops on the wide paths (2:4: four channels at a time over pairs of 64-k blocks, an odd
    last block, leftover channels; 2/3-bit: eight channels at a time, leftover channels): every product at
    +-127*127 (2:4, offset activations at 0 and 255) and at code 7 x 127 (3-bit), still bit-exact."""
    rng = np.random.default_rng(k + n)
    w = rng.choice(np.array([-1.0, 1.0], np.float32), size=(n, k))
    w[:, 1::2] = 0
    sw = pack.pack_sparse24(w, prune=False)
    model = ops.single_op_model(*ops.sparse24_node("X", "Y", sw, prefix="fc"), k=k, n=n)
    q, s, z = pack.quantize_lowbit_rtn(rng.standard_normal((n, k)).astype(np.float32), bits=3, group_size=64)
    q[:] = 7
    lw = pack.pack_lowbit(q, s, np.zeros_like(z), bits=3, group_size=64)
    lmodel = ops.single_op_model(*ops.lowbit_node("X", "Y", lw, prefix="fc"), k=k, n=n)
    for x in (np.where(w[:1] != 0, w[:1], 1.0), -np.where(w[:1] != 0, w[:1], 1.0)):  # all products +, then all -
        x = x.astype(np.float32)
        want, lwant = reference.sparse24_matmul(x, sw), reference.lowbit_matmul(np.abs(x), lw)
        assert abs(want[0, 0]) == pytest.approx(k / 2, rel=1e-6)
        for isa in _variants(isas, monkeypatch):
            np.testing.assert_array_equal(run_model(model, x), want, err_msg=f"isa={isa}")
            np.testing.assert_array_equal(run_model(lmodel, np.abs(x)), lwant, err_msg=f"isa={isa}")


@pytest.mark.parametrize(("m", "k", "n"), [(2, 384, 40), (5, 200, 33), (16, 384, 1536), (64, 1536, 384),
                                          (128, 300, 70), (6, 64, 17), (9, 1000, 129)])
def test_sparse24_batches_stay_exact(
    isas: list[str], run_model: Callable[..., np.ndarray], monkeypatch: pytest.MonkeyPatch, m: int, k: int, n: int
) -> None:
    """Batches of 6 and more on AVX-512 with VBMI2 densify the 2:4 weights per 32-channel tile and run a dense VNNI
    microkernel (8-row blocks, leftover rows, a ragged last tile, K not a multiple of 64): random data with
    outliers and, second, every product at +-127*127 (offset activations at 0 and 255), still bit-exact."""
    rng = np.random.default_rng(m * 7 + k + n)
    cases = [(pack.pack_sparse24(_data(rng, (n, k), "outliers")), _data(rng, (m, k), "sparse_rows"))]
    w = rng.choice(np.array([-1.0, 1.0], np.float32), size=(n, k))
    w[:, 1::2] = 0
    sign = np.where(rng.random((m, 1)) < 0.5, -1.0, 1.0)
    cases.append((pack.pack_sparse24(w, prune=False), (sign * np.where(w[:1] != 0, w[:1], 1.0)).astype(np.float32)))
    for sw, x in cases:
        model = ops.single_op_model(*ops.sparse24_node("X", "Y", sw, prefix="fc"), k=k, n=n)
        want = reference.sparse24_matmul(x, sw)
        for isa, got in _outputs_by_isa(run_model, monkeypatch, isas, model, x).items():
            np.testing.assert_array_equal(got, want, err_msg=f"isa={isa}")


@pytest.mark.parametrize(("bits", "group"), [(2, 64), (2, 128), (3, 256), (2, 32)])
def test_lowbit_batch_one_matches_reference_on_every_isa(
    isas: list[str], run_model: Callable[..., np.ndarray], monkeypatch: pytest.MonkeyPatch, bits: int, group: int
) -> None:
    """Batch 1, 8-channel blocks plus leftover channels, zero points, every group size the wide path unrolls."""
    rng = np.random.default_rng(bits * group)
    n, k = 21, 512
    q, s, z = pack.quantize_lowbit_rtn(rng.standard_normal((n, k)).astype(np.float32), bits=bits, group_size=group)
    lw = pack.pack_lowbit(q, s, z, bits=bits, group_size=group)
    model = ops.single_op_model(*ops.lowbit_node("X", "Y", lw, prefix="fc"), k=k, n=n)
    x = _data(rng, (1, k), "outliers")
    want = reference.lowbit_matmul(x, lw)
    for isa, got in _outputs_by_isa(run_model, monkeypatch, isas, model, x).items():
        np.testing.assert_array_equal(got, want, err_msg=f"isa={isa}")


@pytest.mark.parametrize(("group", "k", "n", "zeros"), [(64, 512, 37, True), (128, 768, 48, False), (256, 1024, 16, True),
                                                      (128, 384, 40, True), (64, 640, 33, False), (64, 320, 16, True),
                                                      (64, 1536, 17, True)])
def test_lowbit2_batch_one_16_channel_blocks_are_exact(
    isas: list[str], run_model: Callable[..., np.ndarray], monkeypatch: pytest.MonkeyPatch, group: int, k: int,
    n: int, zeros: bool
) -> None:
    """2-bit batch 1 on AVX-512 runs 16 channels at a time over 256-k quads (a last half quad, K = 384 or 640, two
    channels per vector; K = 320 takes the 8-channel path), leftover channels after: random codes and, second, every
    product at code 3 x -127 with zero point 0 (the most negative int32 sums), still bit-exact."""
    rng = np.random.default_rng(group + k + n)
    q, s, z = pack.quantize_lowbit_rtn(rng.standard_normal((n, k)).astype(np.float32), bits=2, group_size=group)
    x = _data(rng, (1, k), "outliers")
    cases = [(pack.pack_lowbit(q, s, z if zeros else None, bits=2, group_size=group), x)]
    q[:] = 3
    cases.append((pack.pack_lowbit(q, s, np.zeros_like(z), bits=2, group_size=group), -np.ones((1, k), np.float32)))
    for lw, xx in cases:
        model = ops.single_op_model(*ops.lowbit_node("X", "Y", lw, prefix="fc"), k=k, n=n)
        want = reference.lowbit_matmul(xx, lw)
        for isa, got in _outputs_by_isa(run_model, monkeypatch, isas, model, xx).items():
            np.testing.assert_array_equal(got, want, err_msg=f"isa={isa}")


def test_batched_rank3_input(run_model: Callable[..., np.ndarray]) -> None:
    """X [B, T, K] -> Y [B, T, N] (a transformer's linear layers)."""
    rng = np.random.default_rng(3)
    w = pack.pack_sparse24(rng.standard_normal((48, 96)).astype(np.float32))
    x = rng.standard_normal((2, 5, 96)).astype(np.float32)
    node, inits = ops.sparse24_node("X", "Y", w, prefix="fc")
    onnx = pytest.importorskip("onnx")
    h, tp = onnx.helper, onnx.TensorProto
    graph = h.make_graph([node], "g", [h.make_tensor_value_info("X", tp.FLOAT, ["B", "T", 96])],
                         [h.make_tensor_value_info("Y", tp.FLOAT, ["B", "T", 48])], initializer=inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 21), h.make_opsetid(ops.DOMAIN, 1)])
    model.ir_version = 10
    y = run_model(model, x)
    assert y.shape == (2, 5, 48)
    np.testing.assert_array_equal(y, reference.sparse24_matmul(x, w))


def test_bad_shapes_are_reported_by_name(run_model: Callable[..., np.ndarray]) -> None:
    rng = np.random.default_rng(0)
    w = pack.pack_sparse24(rng.standard_normal((8, 128)).astype(np.float32))
    node, inits = ops.sparse24_node("X", "Y", w, prefix="fc")
    model = ops.single_op_model(node, inits, k="K", n=8)
    with pytest.raises(Exception, match="Sparse24MatMul: values"):
        run_model(model, rng.standard_normal((1, 200)).astype(np.float32))  # K=200 > Kp=128


def test_unknown_or_unsupported_isa_fails_loudly(
    run_model: Callable[..., np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    w = pack.pack_sparse24(rng.standard_normal((8, 64)).astype(np.float32))
    node, inits = ops.sparse24_node("X", "Y", w, prefix="fc")
    model = ops.single_op_model(node, inits, k=64, n=8)
    monkeypatch.setenv("DEVICEFIT_KERNELS_ISA", "sse9")
    with pytest.raises(Exception, match="unknown ISA"):
        run_model(model, rng.standard_normal((1, 64)).astype(np.float32))
