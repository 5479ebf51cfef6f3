"""A small ONNX → torch interpreter for QDQ CNN graphs, so quantization-aware distillation can train them.

Runs the QDQ graph itself (the file onnxruntime will run), op by op, in torch:

* activation ``QuantizeLinear`` → ``DequantizeLinear`` pairs become fake quantization with a straight-through
  estimator (round's gradient passed through, zero outside the clamp range); their zero point is fixed, their
  scale too unless ``learn_scales`` (then one learnable log-scale per activation scale initializer, shared by
  every Q / DQ node that reads it, with LSQ's gradient: Esser et al. 2020);
* weight ``DequantizeLinear`` of an int8 initializer becomes a learnable *latent* in grid units (initialized at
  the stored integers), rounded and clamped with the STE, times the stored per-channel scale;
* an int32 bias ``DequantizeLinear`` (or a float bias) becomes a learnable float bias;
* everything else is a constant.

Supported ops are the ones quantized CNNs are made of (:data:`OPS`); :func:`unsupported` lists what a graph
has beyond them, so a caller can skip instead of failing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm", "MatMul", "Clip", "Relu", "Add", "Mul", "Sigmoid",
     "ReduceMean", "GlobalAveragePool", "AveragePool", "MaxPool", "Reshape", "Flatten", "Identity", "Concat"}
)


def unsupported(model: onnx.ModelProto) -> list[str]:
    """Op types of ``model`` the interpreter cannot run (empty: trainable)."""
    return sorted({n.op_type for n in model.graph.node} - OPS)


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class _FakeQuant(torch.autograd.Function):
    """``(clamp(round(x / s) + zp, lo, hi) - zp) * s`` with the straight-through gradient (zero where clamped),
    in one pass: the element-wise chain of separate ops costs more than the convolutions on CPU.

    When ``s`` needs a gradient it gets LSQ's: ``round(x/s) - x/s`` inside the range, ``lo - zp`` / ``hi - zp``
    where clamped, summed over the elements ``s`` covers."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, s: torch.Tensor, zp: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        v = torch.round(x / s).add_(zp)
        keep = (v >= lo) & (v <= hi)
        out = v.clamp_(lo, hi).sub_(zp).mul_(s)
        if ctx.needs_input_grad[1]:
            ctx.save_for_backward(keep, x, out, s)
        else:
            ctx.save_for_backward(keep)
        return out

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        keep, *rest = ctx.saved_tensors
        g = grads[0]
        grad_s = None
        if rest:
            x, out, s = rest
            # d out / d s: (out - x) / s inside the range, out / s where clamped
            ds = g * (out - x * keep) / s
            dims = [d for d in range(ds.ndim) if s.ndim == 0 or s.shape[d] == 1]
            grad_s = ds.sum(dim=dims, keepdim=s.ndim > 0).reshape(s.shape)
        return g * keep, grad_s, None, None, None


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _axis_shape(scale: torch.Tensor, axis: int, rank: int) -> torch.Tensor:
    if scale.ndim == 0:
        return scale
    shape = [1] * rank
    shape[axis % rank] = -1
    return scale.reshape(shape)


class QdqModule(torch.nn.Module):
    """The QDQ graph as a torch module; ``latents`` (grid units) and ``biases`` are the trainable parameters."""

    def __init__(
        self, model: onnx.ModelProto, *, weight_bound: int, nodes: set[str] | None = None, learn_scales: bool = False
    ) -> None:
        super().__init__()
        self.graph = model.graph
        self.nodes = _topological(model)
        self.bound = weight_bound
        self.consts: dict[str, torch.Tensor] = {
            i.name: torch.from_numpy(np.array(numpy_helper.to_array(i))) for i in model.graph.initializer
        }
        #: learnable activation scales, per scale initializer (shared by its Q and DQ nodes): the log of the
        #: factor applied to the calibrated scale (0 at the start: the untrained graph is exactly the stored one)
        self.log_scales = torch.nn.ParameterDict()
        self.scale_of: dict[str, str] = {}
        if learn_scales:
            for name in activation_scales(model):
                key = f"s{len(self.scale_of)}"
                self.log_scales[key] = torch.nn.Parameter(torch.zeros_like(self.consts[name], dtype=torch.float32))
                self.scale_of[name] = key
        users: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for n in model.graph.node:
            for k, t in enumerate(n.input):
                users.setdefault(t, []).append((n, k))
        #: QuantizeLinear outputs read only by a DequantizeLinear with the same scale and zero point
        self.fused = {
            n.output[0] for n in model.graph.node
            if n.op_type == "QuantizeLinear"
            and all(r.op_type == "DequantizeLinear" and list(r.input[1:]) == list(n.input[1:])
                    and _attrs(r).get("axis", 1) == _attrs(n).get("axis", 1) for r, _ in users.get(n.output[0], []))
        }
        self.latents = torch.nn.ParameterDict()
        self.biases = torch.nn.ParameterDict()
        self.latent_of: dict[str, str] = {}  #: DQ output → parameter key
        self.bias_of: dict[str, str] = {}
        for n in model.graph.node:
            if n.op_type != "DequantizeLinear" or n.input[0] not in self.consts:
                continue
            readers = users.get(n.output[0], [])
            if not readers or any(r.op_type not in ("Conv", "Gemm", "MatMul") for r, _ in readers):
                continue
            if nodes is not None and not any(r.name in nodes for r, _ in readers):
                continue
            q = self.consts[n.input[0]]
            key = f"p{len(self.latent_of) + len(self.bias_of)}"
            if all(k == 2 for _, k in readers):  # a bias
                self.biases[key] = torch.nn.Parameter(self._dq(n, q.double()).float())
                self.bias_of[n.output[0]] = key
            elif q.dtype in (torch.int8, torch.uint8) and all(k == 1 for _, k in readers):
                self.latents[key] = torch.nn.Parameter(q.float())
                self.latent_of[n.output[0]] = key
        for n in model.graph.node:  # float biases of the learned layers
            if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[1] in self.latent_of:
                b = n.input[2]
                if b in self.consts and self.consts[b].is_floating_point() and b not in self.bias_of:
                    key = f"p{len(self.latent_of) + len(self.bias_of)}"
                    self.biases[key] = torch.nn.Parameter(self.consts[b].float().clone())
                    self.bias_of[b] = key

    # ------------------------------------------------------------------------------------------------ ops
    def _scale(self, name: str) -> torch.Tensor:
        key = self.scale_of.get(name)
        return self.consts[name].float() if key is None else self.consts[name].float() * torch.exp(self.log_scales[key])

    def _dq(self, n: onnx.NodeProto, q: torch.Tensor) -> torch.Tensor:
        s = self._scale(n.input[1]).to(q.dtype if q.is_floating_point() else torch.float32)
        zp = self.consts[n.input[2]].to(s.dtype) if len(n.input) > 2 and n.input[2] else torch.zeros((), dtype=s.dtype)
        axis = int(_attrs(n).get("axis", 1))
        return (q.to(s.dtype) - _axis_shape(zp, axis, q.ndim)) * _axis_shape(s, axis, q.ndim)

    def _weight(self, n: onnx.NodeProto) -> torch.Tensor:
        lat = self.latents[self.latent_of[n.output[0]]]
        q = torch.clamp(_ste_round(lat), -self.bound, self.bound)
        return self._dq(n, q)

    def _quantize(self, n: onnx.NodeProto, x: torch.Tensor) -> torch.Tensor:
        """The *dequantized* value when the only reader is a matching DequantizeLinear (fused fake-quant),
        else the integer values (as float)."""
        s = self._scale(n.input[1])
        zp_t = self.consts[n.input[2]] if len(n.input) > 2 and n.input[2] else torch.zeros((), dtype=torch.uint8)
        lo, hi = (0, 255) if zp_t.dtype == torch.uint8 else (-128, 127)
        axis = int(_attrs(n).get("axis", 1))
        s, zp = _axis_shape(s, axis, x.ndim), _axis_shape(zp_t.float(), axis, x.ndim)
        out: torch.Tensor = _FakeQuant.apply(x, s, zp, float(lo), float(hi))
        return out if n.output[0] in self.fused else out / s + zp

    def forward(self, **feeds: torch.Tensor) -> list[torch.Tensor]:
        env: dict[str, torch.Tensor] = dict(self.consts)
        env.update(feeds)
        for key, out in ((k, o) for o, k in self.bias_of.items()):
            env[out] = self.biases[key]
        for n in self.nodes:
            if n.output[0] in self.bias_of:
                continue
            if n.output[0] in self.latent_of:
                env[n.output[0]] = self._weight(n)
                continue
            args = [env[i] if i else None for i in n.input]
            outs = _run(self, n, args)
            env[n.output[0]] = outs
        return [env[o.name] for o in self.graph.output]

    def export_into(self, model: onnx.ModelProto) -> int:
        """Write the learned integers, biases and activation scales into ``model``'s initializers (an int32
        bias is requantized on its layer's new input scale × weight scale, as the int8 kernels require);
        returns how many integers changed."""
        inits = {i.name: i for i in model.graph.initializer}
        dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
        changed = 0
        with torch.no_grad():
            for name in self.scale_of:
                old_s = numpy_helper.to_array(inits[name])
                new_s = self._scale(name).double().numpy().astype(old_s.dtype).reshape(old_s.shape)
                inits[name].CopyFrom(numpy_helper.from_array(new_s, name))
            bias_scale = self._bias_scales(model, dq) if self.scale_of else {}
            for name, s_new in bias_scale.items():
                inits[name].CopyFrom(numpy_helper.from_array(s_new, name))
            for out, key in self.latent_of.items():
                n = dq[out]
                old = numpy_helper.to_array(inits[n.input[0]])
                new = torch.clamp(torch.round(self.latents[key]), -self.bound, self.bound).numpy().astype(old.dtype)
                changed += int((new != old).sum())
                inits[n.input[0]].CopyFrom(numpy_helper.from_array(new, n.input[0]))
            for out, key in self.bias_of.items():
                b = self.biases[key].double()
                if out in dq:  # int32 bias: requantize on its own (possibly new) scale
                    n = dq[out]
                    s = torch.from_numpy(bias_scale[n.input[1]]).double() if n.input[1] in bias_scale \
                        else self.consts[n.input[1]].double()
                    new = _requantize(b, s, numpy_helper.to_array(inits[n.input[0]]))
                    inits[n.input[0]].CopyFrom(numpy_helper.from_array(new, n.input[0]))
                else:
                    inits[out].CopyFrom(numpy_helper.from_array(b.float().numpy(), out))
            for out, n in dq.items():  # int32 biases not trained whose scale moved: same values, new grid
                if out not in self.bias_of and n.input[1] in bias_scale and n.input[0] in self.consts:
                    b, s = self._dq(n, self.consts[n.input[0]].double()), torch.from_numpy(bias_scale[n.input[1]]).double()
                    new = _requantize(b, s, self.consts[n.input[0]].numpy())
                    inits[n.input[0]].CopyFrom(numpy_helper.from_array(new, n.input[0]))
        return changed

    def _bias_scales(self, model: onnx.ModelProto, dq: dict[str, onnx.NodeProto]) -> dict[str, np.ndarray]:
        """Scale initializer of each int32 bias whose layer's input scale was learned → input × weight scale."""
        out: dict[str, np.ndarray] = {}
        for n in model.graph.node:
            if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3 or n.input[2] not in dq:
                continue
            x_dq, w_dq, b_dq = (dq.get(t) for t in n.input[:3])
            if x_dq is None or w_dq is None or b_dq is None or x_dq.input[1] not in self.scale_of:
                continue
            old = self.consts[b_dq.input[1]].numpy()
            xs = np.float32(self._scale(x_dq.input[1]).item())
            out[b_dq.input[1]] = (xs * self.consts[w_dq.input[1]].numpy().astype(np.float32)).astype(old.dtype)
        return out


def _requantize(b: torch.Tensor, s: torch.Tensor, old: np.ndarray) -> np.ndarray:
    """Float bias ``b`` on the grid ``s`` in ``old``'s integer type. A channel with a zero scale (an all-zero
    weight channel) dequantizes to 0 whatever it holds: it keeps its stored value instead of casting inf / NaN."""
    lim = float(np.iinfo(old.dtype).max)
    q = torch.clamp(torch.round(b / torch.where(s == 0, torch.ones_like(s), s)), -lim, lim).numpy()
    return np.where(np.broadcast_to(s.numpy() == 0, q.shape), old, q).astype(old.dtype)


def activation_scales(model: onnx.ModelProto) -> list[str]:
    """Scale initializers of activation quantization (per tensor, positive, read only by Q / DQ nodes of
    non-constant tensors): what ``learn_scales`` trains."""
    inits = {i.name: i for i in model.graph.initializer}
    act: dict[str, bool] = {}
    for n in model.graph.node:
        for k, t in enumerate(n.input):
            if t not in inits:
                continue
            ok = n.op_type in ("QuantizeLinear", "DequantizeLinear") and k == 1 and n.input[0] not in inits
            act[t] = act.get(t, True) and ok
    out = []
    for name, ok in act.items():
        a = numpy_helper.to_array(inits[name])
        if ok and a.size == 1 and a.dtype == np.float32 and float(a) > 0:
            out.append(name)
    return out


def _topological(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The graph's nodes in an order where every input is produced first (QDQ passes append their nodes)."""
    ready = {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input} | {""}
    pending = list(model.graph.node)
    out: list[onnx.NodeProto] = []
    while pending:
        rest: list[onnx.NodeProto] = []
        for n in pending:
            if all(i in ready for i in n.input):
                out.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise NotImplementedError(f"graph has a cycle or an unknown input at {rest[0].name}")
        pending = rest
    return out


def _conv(n: onnx.NodeProto, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    a = _attrs(n)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise NotImplementedError("Conv auto_pad")
    nd = w.ndim - 2
    pads = list(a.get("pads", [0] * 2 * nd))
    if pads[:nd] != pads[nd:]:
        x = F.pad(x, [p for i in reversed(range(nd)) for p in (pads[i], pads[i + nd])])
        pads = [0] * 2 * nd
    fn = F.conv2d if nd == 2 else F.conv1d
    return fn(x, w, b, stride=a.get("strides", 1), padding=pads[:nd], dilation=a.get("dilations", 1),
              groups=a.get("group", 1))


def _reduce_mean(n: onnx.NodeProto, args: list[Any]) -> torch.Tensor:
    a = _attrs(n)
    axes = a.get("axes")
    if axes is None and len(args) > 1 and args[1] is not None:
        axes = [int(v) for v in args[1].tolist()]
    x = args[0]
    dims = list(axes) if axes is not None else list(range(x.ndim))
    return x.mean(dim=dims, keepdim=bool(a.get("keepdims", 1)))


def _reshape(x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    dims = [int(v) for v in shape.tolist()]
    dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _gemm(n: onnx.NodeProto, a_: torch.Tensor, b_: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    a = _attrs(n)
    if a.get("transA", 0):
        a_ = a_.transpose(-1, -2)
    if a.get("transB", 0):
        b_ = b_.transpose(-1, -2)
    y = float(a.get("alpha", 1.0)) * (a_ @ b_)
    return y if c is None else y + float(a.get("beta", 1.0)) * c


def _pool(n: onnx.NodeProto, x: torch.Tensor) -> torch.Tensor:
    a = _attrs(n)
    k = a["kernel_shape"]
    pads = list(a.get("pads", [0] * 2 * len(k)))
    fn: Callable[..., torch.Tensor] = F.max_pool2d if n.op_type == "MaxPool" else F.avg_pool2d
    return fn(x, k, stride=a.get("strides", k), padding=pads[: len(k)])


def _run(mod: QdqModule, n: onnx.NodeProto, args: list[Any]) -> torch.Tensor:
    op = n.op_type
    if op == "QuantizeLinear":
        return mod._quantize(n, args[0])
    if op == "DequantizeLinear":
        if n.input[0] in mod.fused:
            return args[0]
        return mod._dq(n, args[0].float() if not args[0].is_floating_point() else args[0])
    if op == "Conv":
        return _conv(n, args[0], args[1], args[2] if len(args) > 2 else None)
    if op == "Gemm":
        return _gemm(n, args[0], args[1], args[2] if len(args) > 2 else None)
    if op == "MatMul":
        return torch.matmul(args[0], args[1])
    if op == "Clip":
        a = _attrs(n)
        lo = args[1] if len(args) > 1 and args[1] is not None else a.get("min")
        hi = args[2] if len(args) > 2 and args[2] is not None else a.get("max")
        return torch.clamp(args[0], None if lo is None else float(lo), None if hi is None else float(hi))
    if op == "Relu":
        return F.relu(args[0])
    if op == "Add":
        return args[0] + args[1]
    if op == "Mul":
        return args[0] * args[1]
    if op == "Sigmoid":
        return torch.sigmoid(args[0])
    if op == "ReduceMean":
        return _reduce_mean(n, args)
    if op == "GlobalAveragePool":
        return args[0].mean(dim=list(range(2, args[0].ndim)), keepdim=True)
    if op in ("AveragePool", "MaxPool"):
        return _pool(n, args[0])
    if op == "Reshape":
        return _reshape(args[0], args[1])
    if op == "Flatten":
        return args[0].flatten(int(_attrs(n).get("axis", 1)))
    if op == "Identity":
        return args[0]
    if op == "Concat":
        return torch.cat(args, dim=int(_attrs(n)["axis"]))
    raise NotImplementedError(f"op {op} in quantization-aware distillation")
