"""Calibration: feed a ``Dataset`` through an ONNX graph in batches and collect what the passes need.

* :func:`batches` — model feeds from a Dataset (sample count and batch size are knobs), cast to the
  graph's input dtypes; :class:`DatasetReader` wraps them as onnxruntime's ``CalibrationDataReader``.
* :func:`capture` — run the graph with extra outputs (intermediate tensors) and hand each batch's
  values to a callback (GPTQ Hessians, AWQ / SmoothQuant channel statistics, activation ranges).
* :func:`collect_ranges` — activation ranges per tensor with ``minmax`` (exact running min/max),
  ``percentile`` (two-sided cut of a histogram), ``entropy`` (onnxruntime's KL-divergence threshold on
  the same histogram) or ``mse`` (our own: the clipping range minimizing the expected squared
  quantize-dequantize error over the histogram, searched by coordinate descent on both ends).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader

from devicefit.data import Dataset
from devicefit.kernels import ort_session

NUM_BINS = 2048
_NP_TYPES: dict[int, type] = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.BOOL: np.bool_,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.INT8: np.int8,
}


def input_dtypes(model: onnx.ModelProto) -> dict[str, type]:
    inits = {t.name for t in model.graph.initializer}
    return {
        i.name: _NP_TYPES.get(int(i.type.tensor_type.elem_type), np.float32)
        for i in model.graph.input
        if i.name not in inits
    }


def batches(
    data: Dataset, model: onnx.ModelProto, *, batch_size: int = 16, limit: int | None = None
) -> list[dict[str, np.ndarray]]:
    """Feeds of at most ``batch_size`` samples over the first ``limit`` samples of ``data``."""
    types = input_dtypes(model)
    ds = data.take(limit) if limit is not None else data
    arrays = dict(zip(types, ds.ordered(list(types)), strict=True))
    n = len(ds)
    return [
        {k: np.ascontiguousarray(v[i : i + batch_size]).astype(types[k], copy=False) for k, v in arrays.items()}
        for i in range(0, n, batch_size)
    ]


class DatasetReader(CalibrationDataReader):  # type: ignore[misc]
    """onnxruntime ``CalibrationDataReader`` over precomputed feeds (re-iterable via ``rewind``)."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._feeds = list(feeds)
        self._it: Iterator[dict[str, np.ndarray]] = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


def session(model: onnx.ModelProto | str, *, optimize: bool = False, threads: int = 0) -> ort.InferenceSession:
    so = ort_session.session_options(threads=threads or None, optimization="all" if optimize else "disabled")
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort_session.cpu_session(src, so)


def capture(
    model: onnx.ModelProto,
    tensors: Iterable[str],
    feeds: Iterable[dict[str, np.ndarray]],
    fn: Callable[[dict[str, np.ndarray]], None],
) -> None:
    """Run ``model`` on each feed with ``tensors`` as extra outputs; call ``fn({tensor: value})``."""
    names = list(dict.fromkeys(tensors))
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    existing = {o.name for o in aug.graph.output}
    for t in names:
        if t not in existing:
            aug.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    sess = session(aug)
    for feed in feeds:
        values = sess.run(names, feed)
        fn(dict(zip(names, values, strict=True)))


# ------------------------------------------------------------------------------------------- ranges
@dataclass(frozen=True)
class RangeSpec:
    """How to pick one tensor's range."""

    method: str = "minmax"  #: minmax | percentile | entropy | mse
    percentile: float = 99.999
    signed: bool = False  #: int8 (symmetric grid) vs uint8 activations (for ``mse``)


class _Hist:
    """Streaming symmetric histogram (onnxruntime's merge rule: widen by whole bins when needed)."""

    def __init__(self) -> None:
        self.hist: np.ndarray | None = None
        self.threshold = 0.0
        self.lo = np.inf
        self.hi = -np.inf

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32).ravel()
        x = x[np.isfinite(x)]
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        t = max(abs(lo), abs(hi), 1e-12)
        if self.hist is None:
            self.threshold = t
            self.hist, _ = np.histogram(x, NUM_BINS, range=(-t, t))
            return
        if t > self.threshold:
            nb = len(self.hist)
            stride = 2 * self.threshold / nb
            grow = int((t - self.threshold) // stride + 1)
            new = np.zeros(nb + 2 * grow, dtype=self.hist.dtype)
            new[grow : grow + nb] = self.hist
            self.hist, self.threshold = new, grow * stride + self.threshold
        h, _ = np.histogram(x, len(self.hist), range=(-self.threshold, self.threshold))
        self.hist = self.hist + h

    @property
    def edges(self) -> np.ndarray:
        assert self.hist is not None
        return np.linspace(-self.threshold, self.threshold, len(self.hist) + 1)

    def percentile(self, pct: float) -> tuple[float, float]:
        assert self.hist is not None
        cdf = np.cumsum(self.hist) / max(self.hist.sum(), 1)
        cut = (100.0 - pct) / 200.0
        e = self.edges
        lo = float(e[min(int(np.searchsorted(cdf, cut)), len(e) - 1)])
        hi = float(e[min(int(np.searchsorted(cdf, 1.0 - cut)) + 1, len(e) - 1)])
        return max(lo, self.lo), min(hi, self.hi)

    def entropy(self) -> tuple[float, float]:
        from onnxruntime.quantization.calibrate import HistogramCollector

        assert self.hist is not None
        # onnxruntime's entropy calibrater works on 128 bins; merge ours (2048 = 16 x 128, grown evenly)
        merge = max(1, len(self.hist) // 128)
        n = len(self.hist) // merge * merge
        off = (len(self.hist) - n) // 2
        hist = self.hist[off : off + n].reshape(-1, merge).sum(axis=1)
        edges = self.edges[off : off + n + 1 : merge].astype(np.float32)
        hc = HistogramCollector("entropy", False, len(hist), 128, 99.999, "same")
        with contextlib.redirect_stdout(io.StringIO()):
            lo, hi = hc.get_entropy_threshold(
                (hist, edges, np.float32(self.lo), np.float32(self.hi), np.float32(self.threshold)), 128
            )
        return max(float(lo), self.lo), min(float(hi), self.hi)

    def mse(self, signed: bool) -> tuple[float, float]:
        """Clipping range minimizing Σ count·(x − dq(q(x)))² over bin centres (zero kept in range)."""
        assert self.hist is not None
        e = self.edges
        c = (e[:-1] + e[1:]) / 2
        mask = self.hist > 0
        c, h = c[mask], self.hist[mask].astype(np.float64)
        lo0, hi0 = min(self.lo, 0.0), max(self.hi, 0.0)

        def err(lo: float, hi: float) -> float:
            if signed:  # symmetric int8: zero point 0
                s = max(abs(lo), abs(hi)) / 127.0
                if s <= 0:
                    return 0.0
                dq = np.clip(np.round(c / s), -127, 127) * s
            else:
                s = (hi - lo) / 255.0
                if s <= 0:
                    return 0.0
                zp = np.round(-lo / s)
                dq = (np.clip(np.round(c / s) + zp, 0, 255) - zp) * s
            return float(np.sum(h * (c - dq) ** 2))

        grid = np.linspace(0.02, 1.0, 50)
        lo, hi = lo0, hi0
        for _ in range(2):
            hi = float(min((hi0 * f for f in grid), key=lambda v: err(lo, v)))
            if not signed:
                lo = float(min((lo0 * f for f in grid), key=lambda v: err(v, hi)))
        if signed:
            m = max(abs(lo), abs(hi))
            return -m, m
        return lo, hi


def collect_ranges(
    model: onnx.ModelProto, specs: dict[str, RangeSpec], feeds: Sequence[dict[str, np.ndarray]]
) -> dict[str, tuple[float, float]]:
    """Range ``(lo, hi)`` of each tensor in ``specs`` over the calibration feeds (one pass)."""
    hists = {t: _Hist() for t in specs}

    def update(values: dict[str, np.ndarray]) -> None:
        for t, v in values.items():
            hists[t].add(v)

    capture(model, list(specs), feeds, update)
    out: dict[str, tuple[float, float]] = {}
    for t, spec in specs.items():
        h = hists[t]
        if h.hist is None:
            continue
        if spec.method == "minmax":
            lo, hi = h.lo, h.hi
        elif spec.method == "percentile":
            lo, hi = h.percentile(spec.percentile)
        elif spec.method == "entropy":
            lo, hi = h.entropy()
        elif spec.method == "mse":
            lo, hi = h.mse(spec.signed)
        else:
            raise ValueError(f"unknown calibration method {spec.method!r}")
        out[t] = (float(min(lo, 0.0)), float(max(hi, 0.0)))
    return out
