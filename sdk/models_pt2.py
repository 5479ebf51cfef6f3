"""Give a ``torch.export`` program (``.pt2``) its layers back, so it gets the same search as a module.

``torch.export.load(path).module()`` is an *unlifted* graph module: its graph calls ``aten.linear`` /
``aten.conv2d`` / ``aten.batch_norm`` … on parameters held by plain ``nn.Module`` containers, so it has no
``nn.Linear`` / ``nn.Conv2d`` for the analysis, the search space, the passes and the exporter to act on.
:func:`restore_layers` rebuilds them: every such call whose weights belong to one container (named as in the
original model: ``head.1.weight`` → ``head.1``) and to no other call becomes ``call_module`` on a real
``nn.Linear`` / ``nn.Conv{1,2,3}d`` / ``nn.BatchNorm{1,2,3}d`` / ``nn.LayerNorm`` holding the *same*
parameter tensors, put in the container's place. A call that does not fit (a shared weight, a container that
holds more) is left as it is: its layer is simply not offered to the search.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

aten = torch.ops.aten


def _attr(node: Any) -> str | None:
    return str(node.target) if isinstance(node, fx.Node) and node.op == "get_attr" else None


def _holder(gm: fx.GraphModule, targets: list[str | None]) -> str | None:
    """The container path when every tensor target (``None`` = absent) is ``<path>.<leaf>`` of one
    container that holds exactly those tensors and no submodule."""
    given = [t for t in targets if t is not None]
    if not given:
        return None
    paths = {t.rsplit(".", 1)[0] if "." in t else "" for t in given}
    if len(paths) != 1 or "" in paths:
        return None
    path = paths.pop()
    try:
        mod = gm.get_submodule(path)
    except AttributeError:
        return None
    owned = {n for n, _ in mod.named_parameters(recurse=False)} | {n for n, _ in mod.named_buffers(recurse=False)}
    leaves = {t.rsplit(".", 1)[1] for t in given}
    if type(mod) is not nn.Module or any(True for _ in mod.children()) or not leaves <= owned:
        return None
    return path


def _tensor(gm: fx.GraphModule, target: str | None) -> Any:
    """The parameter or buffer at ``target`` (None stays None)."""
    if target is None:
        return None
    path, leaf = target.rsplit(".", 1)
    holder = gm.get_submodule(path)
    return holder.get_parameter(leaf) if leaf in dict(holder.named_parameters(recurse=False)) else holder.get_buffer(leaf)


def _arg(node: fx.Node, i: int, default: Any) -> Any:
    return node.args[i] if len(node.args) > i else default


def _linear(gm: fx.GraphModule, n: fx.Node) -> tuple[nn.Module, list[str | None]] | None:
    w, b = _attr(n.args[1]), _attr(_arg(n, 2, None))
    if w is None:
        return None
    weight = _tensor(gm, w)
    mod = nn.Linear(weight.shape[1], weight.shape[0], bias=b is not None, device="meta")
    mod.weight, mod.bias = weight, _tensor(gm, b)  # type: ignore[assignment]
    return mod, [w, b]


_CONV: dict[Any, tuple[type[nn.Module], int]] = {}
for _op, _cls, _dims in ((aten.conv1d, nn.Conv1d, 1), (aten.conv2d, nn.Conv2d, 2), (aten.conv3d, nn.Conv3d, 3)):
    for _overload in ("default", "padding"):
        if hasattr(_op, _overload):
            _CONV[getattr(_op, _overload)] = (_cls, _dims)


def _conv(gm: fx.GraphModule, n: fx.Node) -> tuple[nn.Module, list[str | None]] | None:
    cls, dims = _CONV[n.target]
    w, b = _attr(n.args[1]), _attr(_arg(n, 2, None))
    if w is None:
        return None
    weight = _tensor(gm, w)
    stride, padding, dilation, groups = (_arg(n, 3, [1] * dims), _arg(n, 4, [0] * dims), _arg(n, 5, [1] * dims),
                                         _arg(n, 6, 1))
    mod = cls(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=stride, padding=padding,
              dilation=dilation, groups=groups, bias=b is not None, device="meta")
    mod.weight, mod.bias = weight, _tensor(gm, b)  # type: ignore[assignment]
    return mod, [w, b]


def _batch_norm(gm: fx.GraphModule, n: fx.Node) -> tuple[nn.Module, list[str | None]] | None:
    x = n.args[0]
    val = x.meta.get("val") if isinstance(x, fx.Node) else None
    targets = [_attr(a) for a in n.args[1:5]]
    training = bool(_arg(n, 5, False))
    if val is None or val.dim() not in (2, 3, 4, 5) or training or targets[2] is None or targets[3] is None:
        return None
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[val.dim()]
    mean = _tensor(gm, targets[2])
    mod = cls(mean.shape[0], eps=float(_arg(n, 7, 1e-5)), momentum=float(_arg(n, 6, 0.1)),
              affine=targets[0] is not None, device="meta")
    if targets[0] is not None:
        mod.weight, mod.bias = _tensor(gm, targets[0]), _tensor(gm, targets[1])  # type: ignore[assignment]
    mod.running_mean, mod.running_var = mean, _tensor(gm, targets[3])
    mod.num_batches_tracked = None
    mod.eval()
    return mod, targets


def _layer_norm(gm: fx.GraphModule, n: fx.Node) -> tuple[nn.Module, list[str | None]] | None:
    targets = [_attr(_arg(n, 2, None)), _attr(_arg(n, 3, None))]
    if targets[0] is None:
        return None
    shape = n.args[1]
    if not isinstance(shape, list | tuple) or not all(isinstance(d, int) for d in shape):
        return None
    mod = nn.LayerNorm([d for d in shape if isinstance(d, int)], eps=float(_arg(n, 4, 1e-5)), bias=targets[1] is not None, device="meta")
    mod.weight, mod.bias = _tensor(gm, targets[0]), _tensor(gm, targets[1])  # type: ignore[assignment]
    return mod, targets


_BUILDERS: dict[Any, Callable[[fx.GraphModule, fx.Node], tuple[nn.Module, list[str | None]] | None]] = {
    aten.linear.default: _linear, **dict.fromkeys(_CONV, _conv), aten.batch_norm.default: _batch_norm,
    aten.layer_norm.default: _layer_norm,
}


def restore_layers(gm: fx.GraphModule) -> list[str]:
    """Rewrite ``gm`` (an unlifted ``torch.export`` module) in place: each linear / conv / batch-norm /
    layer-norm call on one container's own tensors becomes a call of a real layer module at the container's
    path. Returns the paths rebuilt; the outputs are unchanged (same tensors, same ops)."""
    graph = gm.graph
    uses: dict[str, int] = {}
    for n in graph.nodes:
        for a in n.all_input_nodes:
            if a.op == "get_attr":
                uses[a.target] = uses.get(a.target, 0) + 1  # type: ignore[index]
    done: list[str] = []
    for n in list(graph.nodes):
        build = _BUILDERS.get(n.target) if n.op == "call_function" else None
        if build is None or not n.args or not isinstance(n.args[0], fx.Node):
            continue
        try:
            made = build(gm, n)
        except (AttributeError, TypeError, ValueError, IndexError, KeyError, RuntimeError):
            continue
        if made is None:
            continue
        mod, targets = made
        path = _holder(gm, targets)
        if path is None or path in done or any(uses.get(t, 0) != 1 for t in targets if t is not None):
            continue
        gm.set_submodule(path, mod)
        with graph.inserting_before(n):
            call = graph.call_module(path, (n.args[0],))
        call.meta = dict(n.meta)
        n.replace_all_uses_with(call)
        graph.erase_node(n)
        done.append(path)
    for n in list(graph.nodes):
        if n.op == "get_attr" and not n.users:
            graph.erase_node(n)
    if done:  # the layers are modules again: the analysis attributes FLOPs through module hooks
        for n in graph.nodes:
            n.meta.pop("nn_module_stack", None)
    graph.lint()
    gm.recompile()
    return done
