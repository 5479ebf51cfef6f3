"""Knowledge distillation: teacher = the original model, student = the compressed one; unlabeled
calibration data is enough.

Loss on the first output (``loss="auto"`` picks):

* ``kl`` — classifier logits ``[N, C]``: ``T²·KL(softmax(t/T) ‖ softmax(s/T))`` (Hinton et al.), plus an
  equal-weight cross-entropy on labels when the data has them;
* ``cosine`` — embeddings (rows of the teacher output are L2-normalised, e.g. MiniLM): ``1 − cos(s, t)``;
* ``mse`` — anything else.

``cfg.hidden_mse > 0`` adds ``hidden_mse ×`` the mean, over matching layers, of the MSE between student
and teacher outputs of Linear/Conv layers with the **same name and output shape** (normalised by the
teacher activation's variance). Low-rank layers keep their name (``<name>`` is the factor pair), so they
match; structurally pruned layers change shape and are skipped (listed in ``notes``).

Budget: ``cfg.steps``, ``cfg.epochs`` and ``cfg.seconds`` — the first reached ends training. The student
trains in **eval mode** (BatchNorm statistics frozen, dropout off: the objective matches inference), with
AdamW at ``cfg.lr`` (linear warm-up over the first 10 % of steps, ≤ 20, then cosine decay to 0.1·lr when
the budget is in steps); ``nn.Embedding`` tables are frozen. The thread count is whatever
``torch.set_num_threads`` says (no workers spawned).
Weights that are exactly zero when distillation starts (unstructured / N:M pruning) are kept at zero.

Best checkpoint: a held-out slice of the calibration data (10 %, 16–256 samples; the last samples) is
scored every ``eval_every`` steps and at the start; the state with the lowest held-out loss is restored
at the end, so distillation never returns a student worse (on held-out data) than it received. With
fewer than 64 samples there is no held-out slice and an EMA of the training loss decides instead.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from devicefit.compressor.prune.calib import LAYER_TYPES, batch_tensors, first_output, trim_padding
from devicefit.compressor.techniques import Distill
from devicefit.data import Dataset
from devicefit.errors import UserInputError

LossKind = Literal["auto", "kl", "cosine", "mse"]


@dataclass
class DistillResult:
    """The student with the best checkpoint loaded, and how training went."""

    module: nn.Module
    steps: int
    seconds: float
    best_loss: float
    best_step: int
    initial_loss: float
    loss: str
    history: list[dict[str, float]] = field(default_factory=list)
    hidden_layers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "best_loss": self.best_loss,
            "best_step": self.best_step,
            "initial_loss": self.initial_loss,
            "loss": self.loss,
            "hidden_layers": self.hidden_layers,
            "notes": self.notes,
        }


def pick_loss(teacher_out: torch.Tensor) -> str:
    if teacher_out.dim() == 2 and teacher_out.shape[1] > 1:
        norms = teacher_out.norm(dim=1)
        return "cosine" if torch.allclose(norms, torch.ones_like(norms), atol=1e-3) else "kl"
    return "mse"


def output_loss(kind: str, s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    if kind == "kl":
        log_s = F.log_softmax(s / temperature, dim=-1)
        log_t = F.log_softmax(t / temperature, dim=-1)
        return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * temperature**2
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(s.flatten(1), t.flatten(1), dim=1)).mean()
    return F.mse_loss(s, t)


class _Hidden:
    """Forward hooks capturing the outputs of same-named layers of student and teacher."""

    def __init__(self, student: nn.Module, teacher: nn.Module, names: Sequence[str]) -> None:
        self.s: dict[str, torch.Tensor] = {}
        self.t: dict[str, torch.Tensor] = {}
        self.handles = []
        for n in names:
            self.handles.append(student.get_submodule(n).register_forward_hook(self._hook(self.s, n)))
            self.handles.append(teacher.get_submodule(n).register_forward_hook(self._hook(self.t, n)))

    @staticmethod
    def _hook(store: dict[str, torch.Tensor], name: str) -> Any:
        def hook(_m: nn.Module, _a: Any, out: Any) -> None:
            store[name] = first_output(out)

        return hook

    def loss(self) -> torch.Tensor:
        terms = [F.mse_loss(self.s[n], self.t[n].detach()) / (self.t[n].detach().var() + 1e-6) for n in self.t]
        return torch.stack(terms).mean() if terms else torch.zeros(())

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _matching_layers(student: nn.Module, teacher: nn.Module, probe: list[torch.Tensor]) -> tuple[list[str], list[str]]:
    """Teacher Linear/Conv layers whose same-named student module gives the same output shape."""
    t_names = [n for n, m in teacher.named_modules() if isinstance(m, LAYER_TYPES) and n]
    s_mods = dict(student.named_modules())
    cand = [n for n in t_names if n in s_mods]
    shapes: dict[str, dict[str, tuple[int, ...]]] = {"s": {}, "t": {}}
    handles = []
    for key, root in (("s", student), ("t", teacher)):
        for n in cand:
            def hook(_m: nn.Module, _a: Any, out: Any, key: str = key, n: str = n) -> None:
                shapes[key][n] = tuple(first_output(out).shape)

            handles.append(root.get_submodule(n).register_forward_hook(hook))
    with torch.no_grad():
        student(*probe)
        teacher(*probe)
    for h in handles:
        h.remove()
    good = [n for n in cand if n in shapes["s"] and shapes["s"].get(n) == shapes["t"].get(n)]
    skipped = [n for n in t_names if n not in good]
    return good, skipped


def _sparsity_masks(student: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    masks = []
    for m in student.modules():
        if isinstance(m, LAYER_TYPES) and bool((m.weight == 0).any()):
            masks.append((m.weight, (m.weight != 0).to(m.weight.dtype)))
    return masks


def distill(
    student: nn.Module,
    teacher: nn.Module,
    calib: Dataset,
    cfg: Distill,
    input_names: Sequence[str],
    *,
    labels: np.ndarray | None = None,
    progress: bool = True,
    loss: LossKind = "auto",
    eval_every: int | None = None,
    seed: int = 0,
) -> DistillResult:
    """Train ``student`` (in place) to mimic ``teacher`` on ``calib``; returns the best checkpoint.

    ``labels`` (default: ``calib.labels``) add a cross-entropy term for classifiers.
    """
    n = len(calib)
    if n < 2:
        raise UserInputError(f"distillation got {n} calibration sample(s)", "give at least a few dozen samples")
    labels = calib.labels if labels is None else labels
    n_val = min(256, max(16, n // 10)) if n >= 64 else 0
    n_train = n - n_val
    bs = min(cfg.batch_size, n_train)
    per_epoch = math.ceil(n_train / bs)
    budgets = [cfg.steps or math.inf, math.ceil(cfg.epochs * per_epoch) if cfg.epochs else math.inf]
    max_steps = min(budgets)
    deadline = time.monotonic() + cfg.seconds if cfg.seconds else math.inf
    if eval_every is None:
        eval_every = max(5, min(50, int(max_steps) // 10)) if max_steps != math.inf else 25
    teacher.eval()
    student.eval()
    flags = [(p, p.requires_grad) for p in (*teacher.parameters(), *student.parameters())]
    for p in teacher.parameters():
        p.requires_grad_(False)
    for p in student.parameters():
        p.requires_grad_(True)
    frozen = 0
    for mod in student.modules():  # lookup tables: only the rows in the data would move; keep them as is
        if isinstance(mod, nn.Embedding):
            mod.weight.requires_grad_(False)
            frozen += mod.weight.numel()
    names = list(input_names)

    probe = batch_tensors({k: v[: min(2, n)] for k, v in calib.inputs.items()}, names)
    with torch.no_grad():
        probe_out = first_output(teacher(*probe))
    kind = pick_loss(probe_out) if loss == "auto" else loss
    pooled = probe_out.dim() == 2  # one row per sample: padding can be trimmed, teacher rows cached

    def tensors(idx: np.ndarray) -> list[torch.Tensor]:
        xs = batch_tensors({k: v[idx] for k, v in calib.inputs.items()}, names)
        return trim_padding(xs, names) if pooled else xs

    notes: list[str] = []
    hidden_names: list[str] = []
    hidden: _Hidden | None = None
    if cfg.hidden_mse > 0:
        hidden_names, skipped = _matching_layers(student, teacher, probe)
        if skipped:
            notes.append(f"hidden-state MSE skips {len(skipped)} layer(s) whose name/shape differ: {skipped[:8]}")
        hidden = _Hidden(student, teacher, hidden_names)
    masks = _sparsity_masks(student)
    if masks:
        notes.append(f"kept the zeros of {len(masks)} sparse weight(s) at zero")
    if frozen:
        notes.append(f"embedding tables ({frozen} params) are frozen")
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    warmup = max(1, min(20, int(max_steps) // 10)) if max_steps != math.inf else 10

    def lr_at(step: int) -> float:  # linear warm-up, then cosine decay to 10 % when the step budget is known
        if step < warmup:
            return cfg.lr * (step + 1) / warmup
        if max_steps == math.inf:
            return cfg.lr
        frac = (step - warmup) / max(1, max_steps - warmup)
        return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(frac, 1.0))))

    cache: dict[int, torch.Tensor] = {}

    def teacher_rows(idx: np.ndarray, xs: list[torch.Tensor]) -> torch.Tensor:
        """Teacher outputs for ``idx``; cached per sample when nothing else (hidden states) is needed."""
        if hidden is not None or not pooled:
            with torch.no_grad():
                return first_output(teacher(*xs))
        missing = [i for i in idx.tolist() if i not in cache]
        if missing:
            with torch.no_grad():
                rows = first_output(teacher(*tensors(np.asarray(missing))))
            cache.update(zip(missing, rows, strict=True))
        return torch.stack([cache[i] for i in idx.tolist()])

    def batch_loss(idx: np.ndarray) -> torch.Tensor:
        xs = tensors(idx)
        t_out = teacher_rows(idx, xs)
        s_out = first_output(student(*xs))
        total = output_loss(kind, s_out, t_out, cfg.temperature)
        if labels is not None and kind == "kl":
            y = torch.from_numpy(np.asarray(labels)[idx]).long()
            total = 0.5 * total + 0.5 * F.cross_entropy(s_out, y)
        if hidden is not None:
            total = total + cfg.hidden_mse * hidden.loss()
        return total

    val_idx = np.arange(n_train, n)

    @torch.no_grad()
    def val_loss() -> float:
        vals = [float(batch_loss(val_idx[i : i + bs])) * len(val_idx[i : i + bs]) for i in range(0, n_val, bs)]
        return sum(vals) / n_val

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    start = time.monotonic()
    initial = val_loss() if n_val else math.nan
    best, best_step = (initial if n_val else math.inf), 0
    best_state = copy.deepcopy(student.state_dict())
    history: list[dict[str, float]] = [{"step": 0, "val_loss": initial}] if n_val else []
    ema: float | None = None
    bar = _bar(max_steps, progress)
    step = 0
    order = rng.permutation(n_train)
    pos = 0
    try:
        while step < max_steps and time.monotonic() < deadline:
            if pos + bs > n_train:
                order, pos = rng.permutation(n_train), 0
            idx = order[pos : pos + bs]
            pos += bs
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            lossv = batch_loss(idx)
            lossv.backward()
            opt.step()
            if masks:
                with torch.no_grad():
                    for w, m in masks:
                        w.mul_(m)
            step += 1
            lv = float(lossv.detach())
            ema = lv if ema is None else 0.9 * ema + 0.1 * lv
            if step == 1 and not n_val:
                initial = lv
            entry: dict[str, float] = {"step": step, "train_loss": lv}
            done = step >= max_steps or time.monotonic() >= deadline
            if step % eval_every == 0 or done:
                score = val_loss() if n_val else ema
                entry["val_loss" if n_val else "ema_loss"] = score
                if score < best:
                    best, best_step = score, step
                    best_state = copy.deepcopy(student.state_dict())
            history.append(entry)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{lv:.4f}", best=f"{best:.4f}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
        if hidden is not None:
            hidden.close()
        for p, flag in flags:
            p.requires_grad_(flag)
    student.load_state_dict(best_state)
    if best_step == 0 and n_val:
        notes.append("no step beat the starting student on held-out data: the input student is returned")
    return DistillResult(
        module=student,
        steps=step,
        seconds=time.monotonic() - start,
        best_loss=float(best),
        best_step=best_step,
        initial_loss=float(initial),
        loss=kind,
        history=history,
        hidden_layers=hidden_names,
        notes=notes,
    )


def _bar(total: float, progress: bool) -> Any:
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(
        total=None if total == math.inf else int(total), desc="distill", file=sys.stderr, leave=False,
        mininterval=1.0, dynamic_ncols=True,
    )
