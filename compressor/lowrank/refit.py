"""Error-compensating activation-aware SVD: factorize layer by layer in network order, each layer fitted to
what the original layer computed, from the inputs it now receives, weighted by what its outputs matter for.

For a layer with original weight ``W`` and bias ``b``, let ``x`` be its input in the **original** model and
``x'`` its input in the model compressed so far (the same calibration position; the two differ once earlier
layers are factorized). The rank-r pair ``(W', b')`` minimises

    E‖A·((W x + b) − (W' x' + b'))‖²

where ``AᵀA = M`` weights the output directions by how much the **model output** depends on them. Closed
form (no gradient steps, no teacher training): with centred statistics ``C' = Cov(x')``, ``C× = Cov(x, x')``,

* ``W_ls = W·C×·C'⁻¹`` is the best full-rank fit from the new inputs (it undoes the drift earlier layers
  caused, the way GPTQ compensates its rounding error); damped as ``(W·C× + λW)(C' + λI)⁻¹``, a ridge
  toward the original ``W`` (so ``W_ls = W`` exactly when nothing before the layer changed),
* ``W' = A⁻¹ · trunc_r(A·W_ls·L) · L⁻¹`` with ``L Lᵀ = C'`` (damped) is then the exact rank-r minimiser
  (SVD-LLM's truncation-aware whitening on the input side, the same on the output side),
* ``b' = W·E[x] + b − W'·E[x']`` keeps the mean output.

``M`` (``output_metric="gauss-newton"``) is the Gauss–Newton matrix of the model's first output with respect
to the layer's output, ``E[Jᵀ J]``, estimated with random probes ``v``: ``E_v[(Jᵀv)(Jᵀv)ᵀ] = JᵀJ`` (one backward
pass per probe gives it for every layer at once), averaged over positions (K-FAC's independence
assumption). It sees through the activation after the layer, the next layer's weights, LayerNorm's gains and
the pooling — Fisher-weighted SVD with a full matrix. ``output_metric=None`` gives ``A = I``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from devicefit.compressor.lowrank.asvd import damped_cholesky
from devicefit.compressor.lowrank.svd import (
    LowRankRefused,
    as_linear_pair,
    bias_and_dtype,
    choose_rank,
    make_linear_pair,
    split_factors,
    weight_matrix,
)
from devicefit.compressor.prune.calib import (
    _flatten_channels,
    first_output,
    get_module,
    iter_batches,
    set_module,
    trim_padding,
)
from devicefit.compressor.techniques import LowRank
from devicefit.data import Dataset
from devicefit.errors import UserInputError

OUTPUT_METRICS = (None, "gauss-newton")
# The covariances of a wide layer input (MiniLM's 1,536-wide FFN output) need many more positions than
# channels: measured on MiniLM's FFN at 50 % of the FFN params, held-out cosine 0.9355 with 256 calibration
# sentences (~6.8k tokens), 0.9482 with 1,024, 0.9513 with 1,510.
REFIT_SAMPLES = 2048


class _Stop(Exception):
    """Raised by a capture hook: the rest of the forward pass is not needed."""


@dataclass
class _Pair:
    """Running sums over calibration positions of the original input x and the current input x'."""

    n: int = 0
    sx: torch.Tensor | None = None
    sxc: torch.Tensor | None = None
    cross: torch.Tensor | None = None  # Σ x x'ᵀ
    gram: torch.Tensor | None = None  # Σ x' x'ᵀ

    def add(self, x: torch.Tensor, xc: torch.Tensor) -> None:
        # products in float32 per batch (fast BLAS), accumulated in float64
        x, xc = x.float(), xc.float()
        parts = (x.double().sum(0), xc.double().sum(0), (x.T @ xc).double(), (xc.T @ xc).double())
        if self.sx is None:
            self.sx, self.sxc, self.cross, self.gram = parts
        else:
            assert self.sxc is not None and self.cross is not None and self.gram is not None
            self.sx += parts[0]
            self.sxc += parts[1]
            self.cross += parts[2]
            self.gram += parts[3]
        self.n += x.shape[0]


def _positions(layer: nn.Module, t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[positions, channels] of a layer input / output; padding tokens left out for token models."""
    if isinstance(layer, nn.Linear) and mask is not None and t.dim() >= 3 and t.shape[:2] == mask.shape:
        return t[mask.bool()]
    return _flatten_channels(layer, t)


class _Batches:
    """The calibration batches as tensors, once, with the token mask (when the model has one)."""

    def __init__(self, data: Dataset, input_names: Sequence[str], max_samples: int, batch_size: int,
                 token_mask: str | None) -> None:
        idx = list(input_names).index(token_mask) if token_mask is not None and token_mask in input_names else None
        self.items: list[tuple[list[torch.Tensor], torch.Tensor | None]] = []
        data = data.take(max_samples)
        if token_mask is not None and token_mask in data.inputs:
            # sentences of like length together: trimming the shared padding then saves most of it
            order = np.argsort(np.asarray(data.inputs[token_mask]).reshape(len(data), -1).sum(1), kind="stable")
            data = Dataset({k: np.asarray(v)[order] for k, v in data.inputs.items()})
        for tensors in iter_batches(data, input_names, batch_size):
            tensors = trim_padding(tensors, input_names)
            self.items.append((tensors, tensors[idx] if idx is not None else None))


def _input_of(layer: nn.Module, mask: torch.Tensor | None, run: Callable[[], object]) -> torch.Tensor | None:
    """The input positions of ``layer`` while ``run()`` executes (stopped there), or None if it never ran."""
    got: list[torch.Tensor] = []

    def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        got.append(_positions(layer, args[0].detach(), mask))
        raise _Stop

    h = layer.register_forward_pre_hook(hook)
    try:
        with contextlib.suppress(_Stop):
            run()
    finally:
        h.remove()
    return got[0] if got else None


def _capture(module: nn.Module, name: str, tensors: list[torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor:
    """The input of layer ``name`` for one batch (the forward pass from the model input stops there)."""
    got = _input_of(get_module(module, name), mask, lambda: module(*tensors))
    if got is None:
        raise UserInputError(f"layer {name!r} never ran on the calibration data", "check the layer names / inputs")
    return got


def _block_of(module: nn.Module, name: str) -> str | None:
    """The outermost ancestor of layer ``name`` that is an element of a ModuleList / Sequential (a repeated
    block, e.g. ``encoder.layer.3``), or None."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        parent = module.get_submodule(".".join(parts[: i - 1])) if i > 1 else module
        if isinstance(parent, nn.ModuleList | nn.Sequential):
            return ".".join(parts[:i])
    return None


@dataclass
class _Call:
    """The arguments one block was called with (and its output, when the forward was not stopped)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    out: Any = None


def _block_calls(module: nn.Module, blocks: Sequence[str], tensors: list[torch.Tensor], *, stop: bool) -> list[_Call]:
    """How each of ``blocks`` is called in one forward pass of ``module`` on ``tensors`` (the pass stops at
    the first block when ``stop``)."""
    calls: list[_Call] = []

    def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append(_Call(args, dict(kwargs)))
        if stop:
            raise _Stop

    def post(_m: nn.Module, _a: tuple[Any, ...], out: Any) -> None:
        calls[-1].out = out

    handles = []
    for b in blocks:
        handles.append(get_module(module, b).register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(get_module(module, b).register_forward_hook(post))
    try:
        with contextlib.suppress(_Stop):
            module(*tensors)
    finally:
        for h in handles:
            h.remove()
    return calls


def _chain_blocks(module: nn.Module, order: Sequence[str], batches: _Batches) -> list[str]:
    """The sibling blocks from the first layer's block to the last one's, when every layer of ``order`` lies
    in one and the forward chains them — each block called once, on the previous block's output (the same
    tensor) and otherwise the same arguments (checked on the first batch); else []."""
    found = [_block_of(module, n) for n in order]
    blocks = [b for b in found if b is not None]
    if not blocks or len(blocks) != len(found):
        return []
    parent_name = blocks[0].rpartition(".")[0]
    if any(b.rpartition(".")[0] != parent_name for b in blocks):
        return []
    parent = module.get_submodule(parent_name) if parent_name else module
    names = [f"{parent_name}.{c}" if parent_name else c for c, _ in parent.named_children()]
    run = names[names.index(blocks[0]) : names.index(blocks[-1]) + 1]
    with torch.no_grad():
        calls = _block_calls(module, run, batches.items[0][0], stop=False)
    if len(calls) != len(run):
        return []
    for prev, call in itertools.pairwise(calls):
        same_rest = len(call.args) == len(prev.args) and all(a is b for a, b in zip(call.args[1:], prev.args[1:], strict=True))
        same_kw = call.kwargs.keys() == prev.kwargs.keys() and all(call.kwargs[k] is prev.kwargs[k] for k in call.kwargs)
        if not (call.args and call.args[0] is prev.out and same_rest and same_kw):
            return []
    return run


class _BlockChain:
    """Inputs of a run of sibling blocks, cached per batch for one model, so that a layer's input costs one
    block forward instead of a forward from the model input: ``O(blocks)`` work for the refit, not
    ``O(layers × depth)``. Valid only where :func:`_chain_blocks` found the forward chaining the blocks."""

    def __init__(self, module: nn.Module, blocks: Sequence[str], batches: _Batches) -> None:
        self.module, self.blocks, self.at = module, list(blocks), 0
        self.masks = [mask for _, mask in batches.items]
        self.calls = [_block_calls(module, self.blocks[:1], tensors, stop=True)[0] for tensors, _ in batches.items]

    def layer_inputs(self, name: str) -> list[torch.Tensor]:
        """Input positions of layer ``name`` (inside one of the blocks, at or after the current one) per batch."""
        block = _block_of(self.module, name)
        while self.blocks[self.at] != block:
            blk = get_module(self.module, self.blocks[self.at])
            self.calls = [_Call((blk(*c.args, **c.kwargs), *c.args[1:]), c.kwargs) for c in self.calls]
            self.at += 1
        blk, layer = get_module(self.module, self.blocks[self.at]), get_module(self.module, name)
        got = [_input_of(layer, mask, functools.partial(blk, *c.args, **c.kwargs)) for c, mask in zip(self.calls, self.masks, strict=True)]
        out = [g for g in got if g is not None]
        if len(out) != len(got):
            raise UserInputError(f"layer {name!r} did not run in {block!r} on every batch", "check the layer names / inputs")
        return out


def gauss_newton_metrics(module: nn.Module, names: Sequence[str], batches: _Batches, *, probes: int = 4,
                         seed: int = 0) -> dict[str, torch.Tensor]:
    """Per layer: ``E[Jᵀ J]`` over calibration positions, J = ∂(model's first output)/∂(layer output)."""
    layers = {n: get_module(module, n) for n in names}
    outs: dict[str, torch.Tensor] = {}
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(names, 0)

    def hook_for(name: str):  # type: ignore[no-untyped-def]
        def hook(_m: nn.Module, _a: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
            # parameters are frozen: the first layer to run starts the graph at its output
            if not out.requires_grad:
                out = out.detach().requires_grad_(True)
            out.retain_grad()
            outs[name] = out
            return out

        return hook

    gen = torch.Generator().manual_seed(seed)
    handles = [layer.register_forward_hook(hook_for(n)) for n, layer in layers.items()]
    was_training = module.training
    module.eval()
    grads = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        for tensors, mask in batches.items:
            for _ in range(probes):
                outs.clear()
                with torch.enable_grad():
                    y = first_output(module(*tensors))
                    v = torch.randn(y.shape, generator=gen, dtype=y.dtype)
                    if y.requires_grad:
                        (y * v).sum().backward()
                for n, layer in layers.items():
                    t = outs.get(n)
                    if t is None or t.grad is None:
                        continue
                    g = _positions(layer, t.grad.detach(), mask).float()
                    gg = (g.T @ g).double()
                    sums[n] = sums[n] + gg if n in sums else gg
                    counts[n] += g.shape[0]
    finally:
        for h in handles:
            h.remove()
        for p, r in zip(module.parameters(), grads, strict=True):
            p.requires_grad_(r)
        module.train(was_training)
        module.zero_grad(set_to_none=True)
    return {n: sums[n] / counts[n] for n in sums if counts[n]}


def _chol(c: torch.Tensor, damp: float, name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    return damped_cholesky(c, damp, f"{name}: a calibration covariance", "use more calibration samples")


@torch.no_grad()
def refit_layer(name: str, layer: nn.Module, pair: _Pair, tech: LowRank, metric: torch.Tensor | None,
                damp: float) -> nn.Module:
    """The rank-r replacement of ``layer`` from paired statistics (see the module docstring)."""
    w = weight_matrix(name, layer)
    bias, dtype = bias_and_dtype(layer)
    assert pair.sx is not None and pair.sxc is not None and pair.cross is not None and pair.gram is not None
    n = max(pair.n, 1)
    mu, muc = pair.sx / n, pair.sxc / n
    c_new = pair.gram / n - torch.outer(muc, muc)
    cross = pair.cross / n - torch.outer(mu, muc)
    chol, chol_inv, lam = _chol((c_new + c_new.T) / 2, damp, name)
    # W_ls = (W·C× + λW)(C' + λI)⁻¹: the damping pulls toward W, not toward 0, so W_ls = W when x' = x
    w_ls = torch.linalg.solve(chol @ chol.T, (w @ cross + lam * w).T).T
    if metric is not None:
        # A with AᵀA = M (damped): Lᵀ of M's Cholesky factor — any square root gives the same truncation
        m_chol, m_chol_inv, _ = _chol((metric + metric.T) / 2, damp, name)
        a, a_inv = m_chol.T, m_chol_inv.T
        u, sv, vh = torch.linalg.svd(a @ w_ls @ chol, full_matrices=False)
        u = a_inv @ u
    else:
        u, sv, vh = torch.linalg.svd(w_ls @ chol, full_matrices=False)
    rank = choose_rank(name, sv, w.shape[1], w.shape[0], ratio=tech.ratio, energy=tech.energy)
    up_w, down_w = split_factors(u, sv, vh, rank)
    down_w = down_w @ chol_inv
    b = bias.double() if bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    new_bias = w @ mu + b - up_w @ (down_w @ muc)
    return as_linear_pair(layer, make_linear_pair(up_w, down_w, new_bias, dtype))


def refit_asvd(
    module: nn.Module,
    original: nn.Module,
    layers: Mapping[str, LowRank],
    data: Dataset,
    input_names: Sequence[str],
    *,
    output_metric: str | None = "gauss-newton",
    max_samples: int = REFIT_SAMPLES,
    batch_size: int = 32,
    damp: float = 0.01,
    probes: int = 4,
    token_mask: str | None = "attention_mask",
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Factorize ``layers`` of ``module`` **in place**, in network order, each fitted to ``original``'s layer
    (an unmodified copy) from the inputs it receives once the layers before it are factorized. Returns
    (replacements by name, refusals by name: layers that cannot be factorized or would not shrink)."""
    if output_metric not in OUTPUT_METRICS:
        raise UserInputError(f"output_metric={output_metric!r} is invalid", "use None or 'gauss-newton'")
    refused: dict[str, str] = {}
    for name in layers:
        try:
            weight_matrix(name, get_module(module, name))
        except LowRankRefused as exc:
            refused[name] = str(exc)
    order = [n for n, _ in module.named_modules() if n in layers and n not in refused]
    batches = _Batches(data, input_names, max_samples, batch_size, token_mask)
    if not batches.items:
        raise UserInputError("ASVD got no calibration samples", "pass a non-empty calibration dataset")
    was = module.training, original.training
    module.eval()
    original.eval()
    metrics = gauss_newton_metrics(original, order, batches, probes=probes) if output_metric else {}
    done: dict[str, nn.Module] = {}
    chain = _chain_blocks(original, order, batches)
    try:
        with torch.no_grad():
            chains = (_BlockChain(original, chain, batches), _BlockChain(module, chain, batches)) if chain else None
        for name in order:
            pair = _Pair()
            with torch.no_grad():
                if chains is not None:
                    for x, xc in zip(chains[0].layer_inputs(name), chains[1].layer_inputs(name), strict=True):
                        pair.add(x, xc)
                else:
                    for tensors, mask in batches.items:
                        pair.add(_capture(original, name, tensors, mask), _capture(module, name, tensors, mask))
            try:
                new = refit_layer(name, get_module(module, name), pair, layers[name], metrics.get(name), damp)
            except LowRankRefused as exc:
                refused[name] = str(exc)
                continue
            set_module(module, name, new)
            done[name] = new
    finally:
        module.train(was[0])
        original.train(was[1])
    return done, refused
