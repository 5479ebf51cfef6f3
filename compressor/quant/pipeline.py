"""``quantize_onnx``: apply a plan's quant family to an fp32 ONNX graph, layer by layer, then check what runs.

Order of the passes (each touches only its own layers' nodes, so schemes mix freely in one graph):

1. map torch layer names onto nodes, canonicalize weight names (:mod:`.mapping`);
2. one calibration pass on the fp32 graph for what the weight-side algorithms need
   (GPTQ Hessians, AWQ input statistics, SmoothQuant channel maxima);
3. SmoothQuant rewrites (scales folded into LayerNorm or an inserted Mul);
4. weight-only: ``MatMulNBits`` (int4 RTN / GPTQ / AWQ; ``Int8WeightOnly`` on a Linear = 8-bit
   MatMulNBits, blocks of 128 along K, which with ``accuracy_level=4`` runs int8 dot products on CPU),
   ``Int8WeightOnly`` on a Conv = int8 weight + Cast/Mul folded at load → float Conv (storage only);
5. static int8 (QDQ; activation ranges calibrated on the graph as it is now, so they see the
   int4/smoothed layers upstream), including the SmoothQuant layers; then, where the technique asks,
   output-aware (GPTQ) re-rounding of the int8 weights, bias correction, and quantization-aware distillation
   of the QDQ graph against the fp32 one (:mod:`.recovery`);
6. dynamic int8;
7. float16 storage;
8. save, load in onnxruntime with all optimizations, and classify every layer (:mod:`.verify`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import onnx

from devicefit.compressor.plan import Plan
from devicefit.compressor.quant import calibration as C
from devicefit.compressor.quant import embeddings, fusions, ort_int8, smoothquant, verify
from devicefit.compressor.quant import graph as G
from devicefit.compressor.quant.awq import InputStats
from devicefit.compressor.quant.gptq import HessianAccumulator
from devicefit.compressor.quant.isa import IntFormat, int_format
from devicefit.compressor.quant.mapping import LayerMap, LayerNode, canonicalize, map_layers
from devicefit.compressor.quant.weight_only import QuantContext
from devicefit.compressor.techniques import SmoothQuant, Technique
from devicefit.data import Dataset
from devicefit.errors import UserInputError

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


@dataclass
class QuantResult:
    """What :func:`quantize_onnx` wrote and what onnxruntime will really run."""

    path: Path
    float_fallback_layers: list[str]
    int_ops: dict[str, int]
    node_map: dict[str, list[str]]
    fallback_reasons: dict[str, str] = field(default_factory=dict)
    unmapped_layers: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    schemes: dict[str, str] = field(default_factory=dict)
    layer_status: dict[str, str] = field(default_factory=dict)
    int_format: dict[str, Any] = field(default_factory=dict)
    embeddings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _keeps_float(tech: Technique | None) -> bool:
    return tech is not None and tech.onnx_pass == "keep"


def _select(plan: Plan, lmap: LayerMap) -> tuple[dict[str, Technique], dict[str, str]]:
    """Layer → quant technique, plus layers skipped (technique does not apply to the layer type)."""
    chosen: dict[str, Technique] = {}
    skipped: dict[str, str] = {}
    for layer, tech in plan.layers_with("quant", list(lmap.nodes)).items():
        ln = lmap.first(layer)
        kind = ln.kind
        if kind not in tech.layer_types:
            skipped[layer] = f"{tech.method} applies to {'/'.join(tech.layer_types)} layers, {layer} is a {kind} ({ln.op_type})"
            continue
        if _keeps_float(tech):
            continue
        chosen[layer] = tech
    return chosen, skipped


def _capture_stats(
    model: onnx.ModelProto, lmap: LayerMap, chosen: dict[str, Technique], feeds: list[dict[str, Any]]
) -> tuple[dict[str, HessianAccumulator], dict[str, InputStats], dict[str, smoothquant.AbsMax]]:
    hess: dict[str, HessianAccumulator] = {}
    ins: dict[str, InputStats] = {}
    amax: dict[str, smoothquant.AbsMax] = {}
    for layer, tech in chosen.items():
        ln = lmap.first(layer)
        k = ln.weight_kn(model).shape[0] if ln.is_linear else 0
        if tech.calib_stat == "hessian":
            hess.setdefault(ln.input, HessianAccumulator(k))
        elif tech.calib_stat == "inputs":
            ins.setdefault(ln.input, InputStats(k))
        elif tech.calib_stat == "absmax":
            amax.setdefault(ln.input, smoothquant.AbsMax())
    tensors = set(hess) | set(ins) | set(amax)
    if tensors and feeds:  # no data: the statistics stay empty (only optional users, e.g. 2:4's bias correction)

        def update(values: dict[str, Any]) -> None:
            for t, v in values.items():
                if t in hess:
                    hess[t].add(v)
                if t in ins:
                    ins[t].add(v)
                if t in amax:
                    amax[t].add(v)

        C.capture(model, tensors, feeds, update)
    return hess, ins, amax


def _per_layer(ctx: QuantContext, lmap: LayerMap, chosen: dict[str, Technique], onnx_pass: str) -> None:
    """Each layer whose technique applies in ``onnx_pass`` rewrites its own nodes."""
    for layer, tech in chosen.items():
        if tech.onnx_pass == onnx_pass:
            tech.quantize_layer(ctx, layer, lmap.nodes[layer])


def _static(
    model: onnx.ModelProto, lmap: LayerMap, layers: Mapping[str, Technique], feeds: list[dict[str, Any]], fmt: IntFormat
) -> onnx.ModelProto:
    specs: dict[str, C.RangeSpec] = {}
    per_channel: dict[bool, list[str]] = defaultdict(list)
    for layer, tech in layers.items():
        method = getattr(tech, "calibration", "minmax")
        pct = float(getattr(tech, "percentile", 99.999))
        pc = bool(getattr(tech, "per_channel", True))
        for ln in lmap.nodes[layer]:
            specs[ln.node] = C.RangeSpec(method, pct, signed=fmt.activation == "int8")
            per_channel[pc].append(ln.node)
    all_nodes = set(specs)
    glue = ort_int8.glue_nodes(model, all_nodes)
    ranges = ort_int8.static_ranges(model, all_nodes | set(glue), specs, feeds)
    for pc, nodes in per_channel.items():
        group_glue = glue if pc == max(per_channel) else []
        model = ort_int8.static_int8(model, nodes + group_glue, ranges, per_channel=pc, fmt=fmt)
    return model


def _distill(
    before: onnx.ModelProto,
    model: onnx.ModelProto,
    feeds: list[dict[str, Any]],
    static: Mapping[str, Technique],
    nodes: set[str],
    fmt: IntFormat,
    say: Progress,
) -> str:
    """Quantization-aware distillation of ``nodes``' int8 weights (in place); the note the result carries."""
    from devicefit.compressor.quant.recovery import distill

    techs = [t for t in static.values() if getattr(t, "distill_steps", 0)]
    steps = max(int(getattr(t, "distill_steps", 0)) for t in techs)
    lr = float(getattr(techs[0], "distill_lr", 0.02))
    scale_lr = float(getattr(techs[0], "distill_scale_lr", 0.0))
    cosine = getattr(techs[0], "distill_schedule", "constant") == "cosine"
    augment = bool(getattr(techs[0], "distill_augment", False))
    say(f"quantization-aware distillation of {len(nodes)} node(s), {steps} steps")
    r = distill(before, model, feeds, steps=steps, lr=lr, weight_bound=64 if fmt.reduce_range else 127, nodes=nodes,
                scale_lr=scale_lr, cosine_decay=cosine, augment=augment)
    if r.skipped:
        log.warning("quantization-aware distillation skipped: %s", r.skipped)
        return f"quantization-aware distillation skipped: {r.skipped}"
    return (
        f"quantization-aware distillation on {len(nodes)} node(s): {r.steps} steps, best held-out at step "
        f"{r.best_step}, held-out output error {r.heldout_before:.5f} -> {r.heldout_after:.5f} "
        f"(1/4 of the calibration samples held out), {r.changed} int8 weights moved"
        + (", activation scales learned (LSQ)" if scale_lr > 0 else "")
        + (", cosine-decayed learning rate" if cosine else "")
        + (", trained on random-resized crops + flips of the calibration images" if augment else "")
    )


def quantize_onnx(
    fp32_onnx: str | Path,
    out: str | Path,
    plan: Plan,
    *,
    layer_names: list[str] | None = None,
    calib: Dataset | None = None,
    profile: Any | None = None,
    module: Any = None,
    input_names: list[str] | None = None,
    calib_samples: int = 128,
    batch_size: int = 16,
    accuracy_level: int = 4,
    embeddings_int8: bool = True,
    fuse: bool = True,
    progress: Progress | None = None,
    kernels: bool = False,
) -> QuantResult:
    """Quantize ``fp32_onnx`` per ``plan`` (quant family) into ``out``; verify what runs.

    ``layer_names``: torch Linear/Conv names (``None``: every MatMul/Gemm/Conv with a constant weight).
    ``calib``: calibration data (needed by static / SmoothQuant / GPTQ / AWQ); ``calib_samples`` of it
    are used, ``batch_size`` at a time. ``profile``: target DeviceProfile (ISA → int formats; host when
    None). ``module``: the torch model, used to map layers by weight value when names do not tell.
    ``accuracy_level``: MatMulNBits compute (4 = int8 activations, 0 = float). ``embeddings_int8``: when any
    layer is quantized, store large embedding tables (Gather) in 8 bits unless the plan keeps their module
    float (:mod:`.embeddings`). ``fuse``: exact fp32 rewrites first (erf-GELU → ``Gelu``, attention core →
    ``MultiHeadAttention``, :mod:`.fusions`). ``input_names`` is accepted
    for symmetry with the torch side; feeds are matched to the graph's own inputs. ``kernels``: the layers of
    techniques that run devicefit's own kernels (``needs_kernels``: ``int8_sparse24``, ``lowbit_weight_only``)
    get the ``ai.devicefit`` ops (``Sparse24MatMul`` / ``LowBitMatMul``; the target must have the kernel
    library) when True; when False, the standard-op lowering of the same node (2:4 int8 → ``MatMulInteger``,
    bit-identical to the op; 2/3-bit → 4-bit ``MatMulNBits`` with float activations), which any onnxruntime runs.
    """
    say = progress or (lambda _msg: None)
    model = G.load(fp32_onnx)
    notes: list[str] = []
    if fuse and any(r.quant is not None and not _keeps_float(r.quant) for r in plan.rules):
        n_gelu, n_attn = fusions.fuse_gelu(model), fusions.fuse_attention(model)
        if n_gelu or n_attn:
            notes.append(f"fused {n_gelu} GELU and {n_attn} attention subgraph(s) (exact fp32 rewrites)")
    lmap = canonicalize(model, map_layers(model, layer_names, module))
    chosen, skipped = _select(plan, lmap)
    planned_unmapped = [
        layer for layer in lmap.unmapped if plan.choice_for(layer).quant is not None
    ]
    if planned_unmapped:
        notes.append(f"{len(planned_unmapped)} planned layer(s) have no ONNX node: {', '.join(planned_unmapped[:8])}")
        log.warning(notes[-1])
    fmt = int_format(profile)
    needs_calib = [layer for layer, t in chosen.items() if t.needs_calibration]
    if needs_calib and calib is None:
        raise UserInputError(
            f"{len(needs_calib)} layer(s) need calibration data ({chosen[needs_calib[0]].method} on {needs_calib[0]})",
            "pass data (--data file.npz) or pick int8_dynamic / int8_weight_only / int4 (rtn)",
        )
    feeds = C.batches(calib, model, batch_size=batch_size, limit=calib_samples) if calib is not None else []

    if feeds and any(t.calib_stat is not None for t in chosen.values()):
        say("collecting calibration statistics (GPTQ / AWQ / SmoothQuant / 2:4 bias correction)")
    hess, ins, amax = _capture_stats(model, lmap, chosen, feeds)
    sq = {k: t for k, t in chosen.items() if t.calib_stat == "absmax"}
    if sq:
        say("smoothing activations (SmoothQuant)")
        by_alpha: dict[float, dict[str, list[LayerNode]]] = defaultdict(lambda: defaultdict(list))
        for layer, sqt in sq.items():
            for ln in lmap.nodes[layer]:
                by_alpha[cast(SmoothQuant, sqt).alpha][ln.input].append(ln)
        for alpha, groups in by_alpha.items():
            how = smoothquant.apply(model, groups, {k: v.value for k, v in amax.items() if v.value is not None}, alpha)
            notes += [f"smoothquant {t}: {h}" for t, h in how.items()]
        lmap = canonicalize(model, map_layers(model, list(lmap.nodes)))
    ctx = QuantContext(model, hess, ins, accuracy_level, notes, kernels=kernels)
    if any(t.onnx_pass == "weights" for t in chosen.values()):
        say("weight-only layers (MatMulNBits)")
    _per_layer(ctx, lmap, chosen, "weights")
    static = {k: t for k, t in chosen.items() if t.onnx_pass == "static"}
    if static:
        say(f"static int8 on {len(static)} layer(s) (calibrating on {min(len(calib or []), calib_samples)} samples)")
        corrected = [ln.node for k, t in static.items() if getattr(t, "bias_correction", False) for ln in lmap.nodes[k]]
        rounded = [ln.node for k, t in static.items() if getattr(t, "rounding", "nearest") == "gptq" for ln in lmap.nodes[k]]
        before = onnx.ModelProto()
        if corrected or rounded or any(getattr(t, "distill_steps", 0) for t in static.values()):
            before.CopyFrom(model)
        model = _static(model, lmap, static, feeds, fmt)
        if rounded:
            from devicefit.compressor.quant.recovery import round_weights

            say(f"output-aware (GPTQ) rounding of {len(rounded)} node(s)")
            ratios = round_weights(before, model, feeds, nodes=rounded)
            if ratios:
                mean = sum(ratios.values()) / len(ratios)
                notes.append(
                    f"gptq rounding on {len(ratios)} layer node(s): calibration output error x{mean:.2f} of "
                    "round-to-nearest on average (same grid, same int8 fusions)"
                )
        if corrected:
            from devicefit.compressor.quant.recovery import correct_biases

            say(f"bias correction on {len(corrected)} node(s)")
            done = correct_biases(before, model, feeds, nodes=corrected)
            notes.append(f"bias correction on {len(done)} layer node(s) (measured output mean shift folded into biases)")
        distilled = {ln.node for k, t in static.items() if getattr(t, "distill_steps", 0) for ln in lmap.nodes[k]}
        if distilled:
            notes.append(_distill(before, model, feeds, static, distilled, fmt, say))
    dyn = {k: t for k, t in chosen.items() if t.onnx_pass == "dynamic"}
    dyn_convs = [k for k in dyn if lmap.first(k).op_type == "Conv"]
    if dyn_convs:
        notes.append(
            f"int8_dynamic on {len(dyn_convs)} Conv layer(s) runs ConvInteger, which onnxruntime's CPU kernels run "
            "slower than fp32 (measured ~10x on EfficientNet-Lite0); int8_static is the fast int8 path for convs"
        )
    for pc in (True, False):
        nodes = [ln.node for k, t in dyn.items() if bool(getattr(t, "per_channel", True)) == pc for ln in lmap.nodes[k]]
        if nodes:
            say(f"dynamic int8 on {len(nodes)} node(s)")
            model = ort_int8.dynamic_int8(model, nodes, per_channel=pc, fmt=fmt)
    ctx.model = model
    _per_layer(ctx, lmap, chosen, "storage")
    tables = []
    if embeddings_int8 and any(t.onnx_pass != "storage" for t in chosen.values()):
        for node in embeddings.candidates(model):
            name = embeddings.table_name(node.input[0])
            if not _keeps_float(plan.choice_for(name).quant):
                tables.append(embeddings.quantize_gather(model, node))
        if tables:
            say(f"int8 embedding tables: {', '.join(tables)}")
    path = G.save(model, out)

    say("checking the optimized graph")
    insp = verify.inspect(path, list(lmap.nodes))
    planned = [k for k, t in chosen.items() if t.runs_int(lmap.first(k).is_linear)]
    reasons = insp.fallbacks(planned)
    for layer, why in reasons.items():
        log.warning("float fallback: %s %s", layer, why)
    return QuantResult(
        path=path,
        float_fallback_layers=sorted(reasons),
        int_ops=insp.int_ops,
        node_map=lmap.node_names(),
        fallback_reasons=reasons,
        unmapped_layers=planned_unmapped,
        skipped=skipped,
        schemes={k: t.label() for k, t in chosen.items()},
        layer_status={k: v.kind for k, v in insp.layers.items()},
        int_format=asdict(fmt),
        embeddings=tables,
        notes=notes,
    )
