"""Quantization-aware distillation of a QDQ graph against its fp32 teacher, on the calibration data.

The QDQ graph is run in torch (:mod:`.torch_graph`): activations fake-quantized on the graph's own scales,
weights as latents in grid units rounded with a straight-through estimator. The student's outputs are fitted
to the fp32 graph's (mean squared error, normalized by the teacher's variance) with Adam; a quarter of the
calibration samples is held out and the latents with the lowest held-out loss are kept (checked every
``eval_every`` steps; the untrained graph is the first candidate, so the result is never worse on held-out
data than what it started from). The learned integers and biases are written back into the graph: same ops,
same int8 fusions; same scales unless the activation scales are learned too (``scale_lr``, LSQ), then the
learned scales are written into the scale initializers the Q / DQ pairs share. With ``augment`` each training
batch of an image model (one NCHW float input) is a fresh random-resized crop + horizontal flip of the calibration
images, the teacher run on it (more distinct training data from the same calibration photos; the held-out
quarter stays as it is).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from devicefit.compressor.quant import calibration as C
from devicefit.compressor.quant.recovery.torch_graph import QdqModule, unsupported

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QadResult:
    """What one distillation did."""

    steps: int
    best_step: int
    heldout_before: float  #: held-out loss of the post-training graph
    heldout_after: float  #: held-out loss of the kept latents
    changed: int  #: integer weights that moved
    skipped: str = ""  #: why nothing was trained ("" when trained)


def _stack(feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}


def distill(
    fp32: onnx.ModelProto,
    qdq: onnx.ModelProto,
    feeds: Sequence[dict[str, np.ndarray]],
    *,
    steps: int,
    lr: float = 0.01,
    batch_size: int = 8,
    weight_bound: int = 127,
    nodes: set[str] | None = None,
    eval_every: int = 25,
    seed: int = 0,
    scale_lr: float = 0.0,
    kl_weight: float = 0.0,
    temperature: float = 1.0,
    cosine_decay: bool = False,
    augment: bool = False,
    min_area: float = 0.35,
    mixup: float = 0.0,
) -> QadResult:
    """Train ``qdq``'s weights (of ``nodes``' layers; all when None) against ``fp32`` in place.

    ``lr`` is in grid steps (Adam on latents whose unit is one integer step; biases take ``lr`` times their
    layer's mean weight scale). ``weight_bound``: the integer weight limit (127, or 64 with reduce_range).
    ``scale_lr`` > 0 also learns the activation scales (LSQ; Adam on their logarithm, so ``scale_lr`` is a
    relative change per step), written back with the int32 biases requantized to match. ``kl_weight`` adds the
    KL divergence of the softmax at ``temperature`` (× T²) to the loss (classifier logits); ``cosine_decay``
    anneals every learning rate to 0 over ``steps``. ``augment``: every training batch is a random-resized crop
    (a ``min_area``..1 fraction of the image's area, aspect 3/4..4/3, bilinear back to the input size) and a
    horizontal flip (p = 1/2) of the sampled calibration images, the fp32 teacher run on it; only for a graph with
    one 4-D float input (NCHW images), ignored otherwise. ``mixup`` > 0 (with ``augment``) also blends each
    augmented image with another of its batch, weight ~ Beta(``mixup``, ``mixup``) (function matching: the teacher
    labels the blend).
    """
    missing = unsupported(qdq)
    if missing or not feeds:
        why = f"ops not supported: {', '.join(missing)}" if missing else "no calibration data"
        return QadResult(0, 0, float("nan"), float("nan"), 0, skipped=why)
    data = _stack(feeds)
    teacher = _stack([{"y": y} for y in _teacher(fp32, feeds)])["y"]
    n = len(teacher)
    held = max(1, n // 4)
    idx = np.arange(n)
    train_idx, held_idx = idx[held:], idx[:held]
    if len(train_idx) == 0:
        return QadResult(0, 0, float("nan"), float("nan"), 0, skipped="too few calibration samples")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    student = QdqModule(qdq, weight_bound=weight_bound, nodes=nodes, learn_scales=scale_lr > 0)
    if not student.latents:
        return QadResult(0, 0, float("nan"), float("nan"), 0, skipped="no int8 weights to train")
    scale = float(teacher.var()) or 1.0
    params = [{"params": list(student.latents.values()), "lr": lr}]
    if student.biases:
        params.append({"params": list(student.biases.values()), "lr": lr * _mean_weight_scale(student)})
    if student.log_scales:
        params.append({"params": list(student.log_scales.values()), "lr": scale_lr})
    opt = torch.optim.Adam(params)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cosine_decay else None
    names = list(data)
    aug_sess = C.session(fp32, optimize=True) if augment and _is_image(data) else None
    aug_out = aug_sess.get_outputs()[0].name if aug_sess is not None else ""

    def loss_on(sel: np.ndarray, train: bool = False) -> torch.Tensor:
        batch = {k: data[k][sel] for k in names}
        if train and aug_sess is not None:
            batch = {k: _augment(v, rng, min_area, mixup) for k, v in batch.items()}
            ref = torch.from_numpy(np.asarray(aug_sess.run([aug_out], batch)[0], np.float32))
        else:
            ref = torch.from_numpy(teacher[sel])
        out = student(**{k: _layout(torch.from_numpy(v)) for k, v in batch.items()})[0]
        loss = ((out - ref) ** 2).mean() / scale
        if kl_weight > 0:
            t = temperature
            kl = torch.nn.functional.kl_div(torch.log_softmax(out / t, -1), torch.log_softmax(ref / t, -1),
                                            log_target=True, reduction="batchmean")
            loss = loss + kl_weight * t * t * kl
        return loss

    def heldout() -> float:
        with torch.no_grad():
            return float(sum(float(loss_on(held_idx[i : i + 32])) * len(held_idx[i : i + 32])
                             for i in range(0, held, 32)) / held)

    before = best = heldout()
    best_state, best_step = copy.deepcopy(student.state_dict()), 0
    for step in range(1, steps + 1):
        sel = rng.choice(train_idx, size=min(batch_size, len(train_idx)), replace=False)
        opt.zero_grad()
        loss = loss_on(sel, train=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        if sched is not None:
            sched.step()
        if step % eval_every == 0 or step == steps:
            h = heldout()
            log.info("qad step %d: train %.5f held-out %.5f", step, loss.item(), h)
            if h < best:
                best, best_state, best_step = h, copy.deepcopy(student.state_dict()), step
    student.load_state_dict(best_state)
    changed = student.export_into(qdq)
    return QadResult(steps, best_step, before, best, changed)


def _is_image(data: dict[str, np.ndarray]) -> bool:
    if len(data) != 1:
        return False
    x = next(iter(data.values()))
    return x.ndim == 4 and np.issubdtype(x.dtype, np.floating) and min(x.shape[2:]) >= 8


def _augment(x: np.ndarray, rng: np.random.Generator, min_area: float, mixup: float = 0.0) -> np.ndarray:
    """Random-resized crop (area ``min_area``..1, aspect 3/4..4/3) back to HxW, flipped with p = 1/2, per image;
    with ``mixup`` > 0 each result is then blended with another of the batch, weight ~ Beta(mixup, mixup)."""
    n, _, h, w = x.shape
    out = np.empty_like(x)
    for i in range(n):
        area = rng.uniform(min_area, 1.0) * h * w
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        ch = int(min(h, max(1, round(np.sqrt(area / aspect)))))
        cw = int(min(w, max(1, round(np.sqrt(area * aspect)))))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        t = torch.from_numpy(np.ascontiguousarray(x[i : i + 1, :, top : top + ch, left : left + cw]))
        t = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
        if rng.random() < 0.5:
            t = torch.flip(t, dims=(3,))
        out[i] = t[0].numpy()
    if mixup > 0 and n > 1:
        lam = rng.beta(mixup, mixup, size=(n, 1, 1, 1)).astype(x.dtype)
        out = lam * out + (1 - lam) * out[rng.permutation(n)]
    return out


def _layout(x: torch.Tensor) -> torch.Tensor:
    """Images channels-last: torch's CPU depthwise convolutions (forward and backward) run ~2x faster."""
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def _mean_weight_scale(student: QdqModule) -> float:
    scales = [float(student.consts[n.input[1]].float().mean()) for n in student.graph.node
              if n.op_type == "DequantizeLinear" and n.output[0] in student.latent_of]
    return float(np.mean(scales)) if scales else 1e-3


def _teacher(fp32: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
    sess = C.session(fp32, optimize=True)
    out = sess.get_outputs()[0].name
    return [np.asarray(sess.run([out], f)[0], np.float32) for f in feeds]
