"""Roofline latency of a plan on a device profile, per layer.

Each Linear/Conv/GRU/LSTM layer costs ``max(2·MACs ÷ peak GOPS of its compute dtype, bytes moved ÷
bandwidth)`` plus a fixed per-kernel overhead (a recurrent layer's MACs: every gate matrix times one vector per
step and sequence element, :func:`devicefit.compressor.layers.recurrent_macs`). A plan changes a layer's cost through:

* its **quant** choice → the compute dtype class the technique declares (``compute_dtype``: ``fp32``,
  ``fp16``, ``int8`` static, ``int8dyn`` dynamic, ``int8w`` / ``int4w`` weight-only, ``s24`` 2:4 sparse int8,
  ``lowbit2w`` / ``lowbit3w`` 2/3-bit weight-only; costs in :data:`DTYPE_COSTS`) → which peak applies and how many bytes a weight takes;
* its **structural** choice (channel pruning, low-rank) → fewer MACs and params for the layer itself and,
  for channel pruning, fewer input channels in the layers that consume its output (``consumers``, found
  by :func:`devicefit.compressor.prune.deps.find_deps`).

Unstructured / N:M pruning does not change dense MACs or the stored dense size, so it costs nothing here.
The numbers are a *prior*: :mod:`devicefit.compressor.latency.calibrated` scales them with measurements.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from devicefit.compressor.plan import LayerChoice, Plan
from devicefit.compressor.techniques import Technique


@dataclass(frozen=True)
class DtypeCost:
    """What the roofline needs of a compute dtype class."""

    #: bytes per stored weight
    weight_bytes: float
    #: bytes per activation element moved by the layer's kernel
    act_bytes: float
    #: the matmul runs on the int8 peak (else the fp32 one)
    int8_peak: bool = False
    #: extra kernels per layer (dynamic quantization of the activation)
    extra_kernels: int = 0
    #: before the class is measured on a device, its speed-up over fp32 is at most this (the profile's peak
    #: int8 / fp32 ratio is a GEMM peak; whole layers on CPU runtimes gain ~2-3x, weight-only ~1x)
    prior_speedup: float = 1.0
    #: per layer kind (``conv`` / ``linear``), a prior speed-up that replaces :attr:`prior_speedup` (< 1: the
    #: runtime's kernel for this class and kind is slower than its fp32 one)
    kind_prior_speedup: tuple[tuple[str, float], ...] = ()
    #: layer kinds whose kernel reads the weights in fp32 in this class (storage only: the int8 weights of a
    #: GRU / LSTM are dequantized once, at load): the roofline moves fp32 weight bytes for them
    float_weight_kinds: tuple[str, ...] = ()

    def prior_for(self, kind: str) -> float:
        """The prior speed-up over fp32 of a layer of ``kind`` in this class."""
        return dict(self.kind_prior_speedup).get(kind, self.prior_speedup)


#: dtype class → its costs. Techniques name their class in ``compute_dtype``; a technique bringing a new
#: class registers it with :func:`register_dtype` next to its definition.
DTYPE_COSTS: dict[str, DtypeCost] = {
    "fp32": DtypeCost(4.0, 4.0),
    "fp16": DtypeCost(2.0, 2.0),
    "int8": DtypeCost(1.0, 1.0, int8_peak=True, prior_speedup=3.0),
    # a dynamic int8 Conv is onnxruntime's ConvInteger (+ Cast / Mul / Add back to float): no packed kernel,
    # measured 5-20x slower than the fp32 Conv (digits-cnn at batch 32, 2-core x86 host, onnxruntime 1.32)
    "int8dyn": DtypeCost(1.0, 4.0, int8_peak=True, extra_kernels=1, prior_speedup=2.5,
                         kind_prior_speedup=(("conv", 0.2), ("dwconv", 0.2))),
    "int8w": DtypeCost(1.0, 4.0, float_weight_kinds=("gru", "lstm")),
    "int4w": DtypeCost(0.5, 4.0, prior_speedup=2.0),
    # devicefit's own kernels (``needs_kernels``). 2:4 sparse int8: half the int8 values + a 2-bit index per kept
    # value = 0.625 byte per dense weight; int8 dot products on the kept half. Reported for the kernels (bench/kernels.py)
    # on an x86 host: MiniLM 2:4 FFNs 1.27-1.41x fp32 at M=128; batch-1 4096x4096 8.5x fp32
    # (memory-bound)
    "s24": DtypeCost(0.625, 4.0, int8_peak=True, prior_speedup=1.5),
    # 2- / 3-bit group-wise weights (scales + zero points in extra_weight_bytes): weight-only like int4w
    "lowbit2w": DtypeCost(0.25, 4.0, prior_speedup=2.0),
    "lowbit3w": DtypeCost(0.375, 4.0, prior_speedup=2.0),
}
#: the statically quantized class: activations stay int8 between consecutive layers of it (see glue_melems)
STATIC_INT8 = "int8"


def register_dtype(name: str, cost: DtypeCost) -> None:
    """Add a compute dtype class (``ValueError`` if ``name`` exists with other costs)."""
    if DTYPE_COSTS.get(name, cost) != cost:
        raise ValueError(f"dtype class {name!r} is already registered with {DTYPE_COSTS[name]}")
    DTYPE_COSTS[name] = cost


def dtype_of(quant: Technique | None) -> str:
    """Compute dtype class of a quant technique (``None`` = fp32), as the technique declares it."""
    if quant is None:
        return "fp32"
    return quant.compute_dtype if quant.compute_dtype in DTYPE_COSTS else "fp32"


def layer_kind(type_name: str) -> str:
    """``linear``, ``conv``, ``gru`` or ``lstm`` from an analysis layer type (``Linear``, ``Conv2d``, ``GRU``,
    ``linear`` ...)."""
    t = type_name.lower()
    if t in ("gru", "lstm"):
        return t
    return "conv" if "conv" in t else "linear"


def _channels(shape: Any) -> int:
    """Channels (dim 1) of an (N, C, ...) activation shape; 0 when not known."""
    try:
        return int(shape[1]) if shape is not None and len(shape) >= 3 else 0
    except (TypeError, ValueError, IndexError):
        return 0


def conv_kind(macs: int, out_elems: int, in_channels: int) -> str:
    """``dwconv`` for a depthwise (or grouped) convolution, else ``conv``: a dense conv does C_in·k² MACs per
    output element, a depthwise one k² — fewer than its input channels. Depthwise kernels run at a small
    fraction of a dense conv's efficiency on CPUs (little reuse per weight, memory-bound) and gain little or
    nothing from int8, so they keep their own kind ratios: pooled with dense convs, either kind's measurements
    would set the other's efficiency and int8 speed-up."""
    if in_channels > 1 and out_elems > 0 and macs / out_elems < in_channels:
        return "dwconv"
    return "conv"


def _numel(shape: Any) -> int:
    if not shape:
        return 0
    try:
        dims = [int(d) for d in shape]
    except (TypeError, ValueError):
        return 0
    return int(math.prod(d for d in dims if d > 0))


@dataclass(frozen=True)
class LayerSpec:
    """Static facts of one Linear/Conv layer (from ``analysis.analyze``) at the analysed input shape."""

    name: str
    kind: str
    params: int
    macs: int
    in_elems: int
    out_elems: int

    @classmethod
    def from_info(cls, info: Any) -> LayerSpec:
        """Build from an analysis ``LayerInfo`` (name, type, params, macs, input_shape, output_shape)."""
        kind = layer_kind(str(getattr(info, "type", "linear")))
        out_elems = _numel(getattr(info, "output_shape", None))
        if kind == "conv":
            kind = conv_kind(int(info.macs), out_elems, _channels(getattr(info, "input_shape", None)))
        return cls(
            name=str(info.name),
            kind=kind,
            params=int(info.params),
            macs=int(info.macs),
            in_elems=_numel(getattr(info, "input_shape", None)),
            out_elems=out_elems,
        )

    def batched(self, batch_size: int) -> LayerSpec:
        """The same layer run on ``batch_size`` inputs at once (analysis is per sample): MACs and activations
        scale with the batch, the weights (read once per run) do not."""
        n = int(batch_size)
        if n == 1:
            return self
        return replace(self, macs=self.macs * n, in_elems=self.in_elems * n, out_elems=self.out_elems * n)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "params": self.params, "macs": self.macs,
                "in_elems": self.in_elems, "out_elems": self.out_elems}


@dataclass(frozen=True)
class LayerCost:
    """One layer under a plan: what the roofline needs."""

    name: str
    kind: str
    dtype: str
    macs: float
    params: float
    weight_bytes: float
    act_bytes: float
    kernels: int
    #: MACs relative to the unmodified layer (structural effect)
    mac_scale: float = 1.0
    #: the unmodified layer's kind and shape (params, input and output elements): layers that share it run
    #: the same kernels on the same sizes (a transformer's q/k/v/o projections), so they share efficiencies
    shape: str = ""
    #: activation elements in and out per inference (batch included; output after structural changes)
    in_elems: float = 0.0
    out_elems: float = 0.0

    @property
    def shape_class(self) -> str:
        """``shape`` under this plan's structural change and dtype ('' when the shape is not known)."""
        return f"{self.shape}@{self.mac_scale:.3g}|{self.dtype}" if self.shape else ""


def structural_scales(
    specs: Sequence[LayerSpec], choices: Mapping[str, LayerChoice], consumers: Mapping[str, Sequence[str]] | None = None
) -> dict[str, tuple[float, float, float, int]]:
    """Per layer: (MAC scale, param scale, output-activation scale, kernels) from prune / low-rank choices.

    Channel pruning (a prune technique with ``removes_channels``) removes output
    channels of the layer and the matching input channels of its consumers. Low-rank with ``ratio`` r
    keeps (1 − r) of the layer's params (and MACs) in two kernels; with ``energy`` the kept fraction is
    unknown before the SVD and 0.5 is assumed.
    """
    consumers = consumers or {}
    out: dict[str, list[float]] = {s.name: [1.0, 1.0, 1.0, 1.0] for s in specs}
    for s in specs:
        c = choices.get(s.name)
        if c is None:
            continue
        if c.prune is not None and c.prune.removes_channels:
            keep = 1.0 - float(getattr(c.prune, "ratio", 0.0))
            row = out[s.name]
            row[0] *= keep
            row[1] *= keep
            row[2] *= keep
            for dep in consumers.get(s.name, ()):
                if dep in out:
                    out[dep][0] *= keep
                    out[dep][1] *= keep
        if c.lowrank is not None:
            ratio = getattr(c.lowrank, "ratio", None)
            keep = 1.0 - float(ratio) if ratio is not None else 0.5
            out[s.name][0] *= keep
            out[s.name][1] *= keep
            out[s.name][3] = 2.0
    return {k: (v[0], v[1], v[2], int(v[3])) for k, v in out.items()}


def plan_costs(
    specs: Sequence[LayerSpec], plan: Plan | Mapping[str, LayerChoice], *, consumers: Mapping[str, Sequence[str]] | None = None
) -> list[LayerCost]:
    """Cost inputs of every layer under ``plan`` (a Plan or resolved {layer: LayerChoice})."""
    names = [s.name for s in specs]
    choices = plan.resolve(names) if isinstance(plan, Plan) else dict(plan)
    scales = structural_scales(specs, choices, consumers)
    costs = []
    for s in specs:
        c = choices.get(s.name)
        dtype = dtype_of(c.quant if c is not None else None)
        mac_s, par_s, out_s, kernels = scales[s.name]
        params = s.params * par_s
        cost = DTYPE_COSTS[dtype]
        wbytes = params * cost.weight_bytes
        if c is not None and c.quant is not None:
            wbytes += c.quant.extra_weight_bytes(params)
        act = (s.in_elems + s.out_elems * out_s) * cost.act_bytes
        costs.append(
            LayerCost(s.name, s.kind, dtype, s.macs * mac_s, params, wbytes, act, kernels + cost.extra_kernels, mac_s,
                      shape=f"{s.kind}:{s.params}:{s.in_elems}:{s.out_elems}", in_elems=float(s.in_elems),
                      out_elems=float(s.out_elems * out_s))
        )
    return costs


@dataclass(frozen=True)
class Roofline:
    """Peak throughput and bandwidth of a device (whole CPU), plus a per-kernel launch overhead."""

    peak_gops_fp32: float
    peak_gops_int8: float
    mem_bandwidth_gbs: float
    kernel_overhead_ms: float = 0.004

    @classmethod
    def from_profile(cls, profile: Any) -> Roofline:
        return cls(
            peak_gops_fp32=float(profile.peak_gops_fp32),
            peak_gops_int8=float(profile.peak_gops_int8),
            mem_bandwidth_gbs=float(profile.mem_bandwidth_gbs),
        )

    def peak_gops(self, dtype: str) -> float:
        if DTYPE_COSTS[dtype].int8_peak:
            return self.peak_gops_int8
        return self.peak_gops_fp32

    def layer_ms(self, cost: LayerCost) -> float:
        """max(compute, memory) + kernels × overhead, in milliseconds."""
        compute_s = 2.0 * cost.macs / (self.peak_gops(cost.dtype) * 1e9)
        moved = cost.weight_bytes
        if cost.kind in DTYPE_COSTS[cost.dtype].float_weight_kinds:
            moved = cost.params * DTYPE_COSTS["fp32"].weight_bytes
        memory_s = (moved + cost.act_bytes) / (self.mem_bandwidth_gbs * 1e9)
        return max(compute_s, memory_s) * 1e3 + cost.kernels * self.kernel_overhead_ms

    def plan_ms(self, costs: Iterable[LayerCost]) -> dict[str, float]:
        return {c.name: self.layer_ms(c) for c in costs}

    def to_dict(self) -> dict[str, float]:
        return {"peak_gops_fp32": self.peak_gops_fp32, "peak_gops_int8": self.peak_gops_int8,
                "mem_bandwidth_gbs": self.mem_bandwidth_gbs, "kernel_overhead_ms": self.kernel_overhead_ms}


def predicted_size_bytes(specs: Sequence[LayerSpec], costs: Sequence[LayerCost], total_params: int) -> float:
    """Stored model size: layer weights at their dtype + every other parameter (embeddings, norms) in fp32."""
    layer_params = sum(s.params for s in specs)
    other = max(0, total_params - layer_params) * 4.0
    return other + sum(c.weight_bytes for c in costs)


def glue_melems(costs: Sequence[LayerCost]) -> float:
    """Millions of activation elements a plan converts between int8 and float outside its layers: where
    statically quantized layers (dtype ``int8``, whose activations stay int8 from one to the next) meet a
    float one in network order, a QuantizeLinear / DequantizeLinear runs on the tensor between them; the
    model input and output count when the first / last layer is int8. A float layer kept inside a run of
    int8 ones costs two such conversions — on a CNN's early, large activations, more than the layer saves."""
    total = 0.0
    prev: LayerCost | None = None
    for c in costs:
        if (c.dtype == STATIC_INT8) != (prev is not None and prev.dtype == STATIC_INT8):
            total += c.in_elems
        prev = c
    if prev is not None and prev.dtype == STATIC_INT8:
        total += prev.out_elems
    return total / 1e6


def with_dtype(cost: LayerCost, dtype: str) -> LayerCost:
    """The same layer at another dtype (used to derive priors for dtypes not measured yet)."""
    old, new = DTYPE_COSTS[cost.dtype], DTYPE_COSTS[dtype]
    act = cost.act_bytes / old.act_bytes * new.act_bytes
    kernels = cost.kernels - old.extra_kernels + new.extra_kernels
    return replace(cost, dtype=dtype, weight_bytes=cost.params * new.weight_bytes, act_bytes=act, kernels=kernels)
