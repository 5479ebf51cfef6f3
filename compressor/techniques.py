"""Technique configs: one frozen dataclass per compression scheme — the one place a technique is defined.

A technique class declares everything the rest of devicefit asks of it, as class attributes and methods:

* **identity**: ``family`` and ``method`` (the key of :data:`TECHNIQUES`, used by plan YAML/JSON);
* **capabilities**: ``layer_types``, ``formats``, ``needs_calibration``, ``needs_kernels`` (runs devicefit's
  own kernels — ``ai.devicefit`` ops, :mod:`devicefit.kernels` — where the target has them, standard ops
  elsewhere);
* **CLI**: ``cli_names`` (short names → fixed field values, e.g. ``int4_gptq``), ``cli_number`` (the field a
  bare number sets, ``structured:0.5``); names accept ``-`` for ``_`` (:func:`canonical_name`);
* **search**: ``search_default`` / ``search_ratios`` / ``search_settings`` / ``search_layer_types`` (the
  default search space);
* **latency model**: ``compute_dtype`` (a dtype class of :mod:`devicefit.compressor.latency.roofline`),
  ``removes_channels``, :meth:`Technique.extra_weight_bytes`;
* **sensitivity**: ``fake_weight`` / ``fake_activation`` (or :meth:`Technique.fake`), the torch imitation
  scored per layer (:mod:`devicefit.compressor.fake`);
* **application**: ``structural_stage`` + :meth:`Technique.apply_mask` (torch side, prune / low-rank) or
  ``onnx_pass`` + :meth:`Technique.quantize_layer` (graph side, quant).

Adding a technique = one class here (or in its own module) decorated with :func:`register`, plus its kernel.
Families are applied in the order prune → lowrank → distill → quant (see ``Plan``). Every config validates
itself at construction and names the field, the value and what would be valid. This module imports no torch
or onnx: the methods import their kernels when called.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from devicefit import defaults
from devicefit.errors import UserInputError

if TYPE_CHECKING:
    from devicefit.compressor.fake import FakeOp

Family = Literal["prune", "lowrank", "quant"]
FAMILIES: tuple[Family, ...] = ("prune", "lowrank", "quant")
#: layer kinds of the recurrent layers (``nn.GRU`` / ``nn.LSTM``, :mod:`devicefit.compressor.layers`)
RECURRENT_KINDS: tuple[str, ...] = ("gru", "lstm")
#: how a prune / low-rank technique rewrites the torch module (see :mod:`devicefit.compressor.structural`)
StructuralStage = Literal["channels", "factorize", "mask"]
#: which pass of :func:`devicefit.compressor.quant.quantize_onnx` applies a quant technique
OnnxPass = Literal["keep", "weights", "static", "dynamic", "storage"]
#: a field left out of ``to_dict`` / ``label`` while it holds its default (keeps plan hashes stable)
OMIT_DEFAULT = {"omit_default": True}


def canonical_name(name: str) -> str:
    """Scheme / method names accept ``-`` and ``_`` alike: ``int8-static`` → ``int8_static``."""
    return name.strip().replace("-", "_")


def _fail(cls: str, name: str, value: object, valid: str) -> UserInputError:
    return UserInputError(f"{cls}.{name}={value!r} is invalid", f"{name} must be {valid}")


def _check_fraction(cls: str, name: str, value: float, *, allow_zero: bool = False) -> None:
    lo_ok = value >= 0 if allow_zero else value > 0
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (lo_ok and value < 1):
        raise _fail(cls, name, value, "a number in (0, 1)" if not allow_zero else "a number in [0, 1)")


def _check_choice(cls: str, name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise _fail(cls, name, value, "one of " + ", ".join(repr(c) for c in choices))


@dataclass(frozen=True)
class Technique:
    """Base of every technique config (see the module docstring for what a subclass declares)."""

    family: ClassVar[Family]
    method: ClassVar[str]
    #: layer kinds the technique can act on ("linear", "conv", "gru", "lstm": see ``compressor/layers.py``)
    layer_types: ClassVar[tuple[str, ...]] = ("linear", "conv")
    #: the kinds the default search space offers it on (``None``: all of ``layer_types``; see ``SpaceConfig``)
    search_layer_types: ClassVar[tuple[str, ...] | None] = None
    #: needs calibration data (activations) to be applied
    needs_calibration: ClassVar[bool] = False
    #: export formats that can carry the result
    formats: ClassVar[tuple[str, ...]] = ("onnx",)
    #: runs devicefit's own kernels (``ai.devicefit`` ops) where the target has them, standard ops elsewhere
    #: (``quantize_onnx(kernels=...)``)
    needs_kernels: ClassVar[bool] = False
    #: CLI short name → fixed field values (``None``: the method name, no fixed values)
    cli_names: ClassVar[Mapping[str, Mapping[str, Any]] | None] = None
    #: the field a bare number after the name sets (``magnitude:0.5`` → ratio); ``None``: ``k=v`` options only
    cli_number: ClassVar[str | None] = None
    #: CLI syntax of :meth:`from_cli_text`, for help and errors (``N:M (e.g. 2:4)``)
    cli_syntax: ClassVar[str | None] = None
    #: offered by the default search space, on this grid of ``ratio`` (per family), with these fixed fields
    search_default: ClassVar[bool] = False
    search_ratios: ClassVar[tuple[float, ...]] = ()
    search_settings: ClassVar[Mapping[str, Any]] = {}
    #: the fields of :attr:`search_settings` that only make the search's candidates cheaper to compress (the same
    #: technique, same ops, less accurate): a fit's chosen plan is compressed again with them at the class
    #: defaults, or at :attr:`finish_settings` where given (:meth:`finished`)
    quick_fields: ClassVar[tuple[str, ...]] = ()
    finish_settings: ClassVar[Mapping[str, Any]] = {}
    #: dtype class the layer computes in (latency model); ``fp32`` for everything that is not quantization
    compute_dtype: ClassVar[str] = "fp32"
    #: physically removes output channels (and the matching inputs of the layers consuming them)
    removes_channels: ClassVar[bool] = False
    #: sensitivity's imitation: a weight transform of :mod:`devicefit.compressor.fake` (by name), the activation
    #: quantizer (``dynamic`` / ``static``), whether rows zeroed by the transform zero their bias too
    fake_weight: ClassVar[str | None] = None
    fake_activation: ClassVar[str | None] = None
    fake_zero_bias_rows: ClassVar[bool] = False
    #: the layer computes in an integer kernel (checked on the optimized graph after quantization)
    int_compute: ClassVar[bool] = False
    #: torch-side stage (prune / low-rank families)
    structural_stage: ClassVar[StructuralStage | None] = None
    #: graph-side pass (quant family)
    onnx_pass: ClassVar[OnnxPass | None] = None

    def _shown(self) -> list[tuple[str, Any]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self)
                if not (f.metadata.get("omit_default") and getattr(self, f.name) == f.default)]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dict(self._shown())}

    def label(self) -> str:
        """Short human label, e.g. ``int4_weight_only(group_size=32,method=gptq)``."""
        args = ",".join(f"{k}={v}" for k, v in self._shown())
        return f"{self.method}({args})" if args else self.method

    @classmethod
    def shortcuts(cls) -> Mapping[str, Mapping[str, Any]]:
        """CLI names of this class → the field values each one fixes."""
        return cls.cli_names if cls.cli_names is not None else {cls.method: {}}

    @classmethod
    def from_cli_text(cls, text: str) -> Technique | None:
        """A technique from CLI syntax other than ``NAME[:ARG]`` (``2:4`` for N:M); ``None`` = not this syntax."""
        return None

    @classmethod
    def from_cli(cls, fixed: Mapping[str, Any], options: dict[str, Any]) -> Technique:
        """The config for a CLI name's ``fixed`` fields and the user's ``options`` (fixed ones win)."""
        return cls(**{**options, **fixed})

    def finished(self) -> Technique:
        """This technique as a fit's chosen plan is compressed at the end: each of :attr:`quick_fields` still at
        its search value set to its finish value (:attr:`finish_settings`, else the class default); a value the
        user chose is kept. ``self`` when nothing changes."""
        initial = {f.name: f.default for f in fields(self)}
        changes = {k: self.finish_settings.get(k, initial[k]) for k in self.quick_fields
                   if getattr(self, k) == self.search_settings.get(k)}
        changes = {k: v for k, v in changes.items() if getattr(self, k) != v}
        return replace(self, **changes) if changes else self

    def finish_structure(self) -> Technique | None:
        """A prune technique a fit's finish adds on the layer when it distills the chosen plan (distillation keeps
        pruned zeros at zero): the sparsity pattern this technique imposes, trained around instead of cut in
        afterwards. ``None`` (the default): nothing added."""
        return None

    # ------------------------------------------------------------------ latency model / sensitivity
    def extra_weight_bytes(self, params: float) -> float:
        """Stored bytes besides the weights themselves (quantization scales) for ``params`` weights."""
        return 0.0

    def fake(self) -> FakeOp | None:
        """The torch imitation scored by sensitivity (``None``: the layer is left as it is)."""
        if self.fake_weight is None and self.fake_activation is None:
            return None
        from devicefit.compressor import fake

        weight = getattr(fake, self.fake_weight) if self.fake_weight else None
        return fake.FakeOp(weight, self.fake_activation, self.fake_zero_bias_rows)

    # ------------------------------------------------------------------ application
    def apply_mask(self, module: Any, targets: list[str], calib: Any, input_names: list[str],
                   stats: Mapping[str, Any]) -> dict[str, float]:
        """``structural_stage == "mask"``: zero weights of ``targets`` in place; returns target → sparsity."""
        raise NotImplementedError(f"{type(self).__name__} is not a mask technique")

    def quantize_layer(self, ctx: Any, layer: str, nodes: list[Any]) -> None:
        """``onnx_pass`` ``weights`` / ``storage``: rewrite the ONNX ``nodes`` of ``layer`` in ``ctx.model``."""
        raise NotImplementedError(f"{type(self).__name__} has no per-layer ONNX rewrite")

    def runs_int(self, is_linear: bool) -> bool:
        """Whether the layer's compute becomes an integer kernel (checked on the optimized graph)."""
        return self.int_compute

    @property
    def calib_stat(self) -> str | None:
        """Statistic the graph-side algorithm needs from calibration: ``hessian``, ``inputs``, ``absmax``."""
        return None


T = TypeVar("T", bound=type[Technique])


# ----------------------------------------------------------------------------------------- registry
TECHNIQUES: dict[tuple[Family, str], type[Technique]] = {}


def register(cls: T) -> T:
    """Add a technique class to :data:`TECHNIQUES` (usable as a decorator). Its ``(family, method)`` and CLI
    names must be new."""
    key = (cls.family, cls.method)
    if key in TECHNIQUES and TECHNIQUES[key] is not cls:
        raise ValueError(f"technique {key} is already registered ({TECHNIQUES[key].__name__})")
    taken = {n for c in family_classes(cls.family) if c is not cls for n in c.shortcuts()}
    clash = sorted(taken & set(cls.shortcuts()))
    if clash:
        raise ValueError(f"{cls.__name__}: CLI name(s) {clash} already used in family {cls.family!r}")
    TECHNIQUES[key] = cls
    return cls


def unregister(cls: type[Technique]) -> None:
    """Remove ``cls`` from the registry (tests that register a technique of their own)."""
    TECHNIQUES.pop((cls.family, cls.method), None)


def family_classes(family: str) -> list[type[Technique]]:
    """Registered classes of ``family``, in registration order."""
    return [c for (f, _), c in TECHNIQUES.items() if f == family]


# --------------------------------------------------------------------------------------------- prune
class _Masking(Technique):
    """Shared by the mask techniques: zeros in dense weights (shapes kept)."""

    structural_stage: ClassVar[StructuralStage | None] = "mask"
    cli_number: ClassVar[str | None] = "ratio"


@register
@dataclass(frozen=True)
class ChannelPrune(Technique):
    """Structured pruning: remove ``ratio`` of whole filters / neurons / heads with their dependents."""

    family: ClassVar[Family] = "prune"
    method: ClassVar[str] = "structured"
    formats: ClassVar[tuple[str, ...]] = ("onnx", "tflite")
    cli_number: ClassVar[str | None] = "ratio"
    search_default: ClassVar[bool] = True
    search_ratios: ClassVar[tuple[float, ...]] = (0.25, 0.5)
    removes_channels: ClassVar[bool] = True
    structural_stage: ClassVar[StructuralStage | None] = "channels"
    fake_weight: ClassVar[str | None] = "w_channels"
    fake_zero_bias_rows: ClassVar[bool] = True
    ratio: float = 0.3
    importance: str = "l2"
    global_ranking: bool = False

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_fraction(name, "ratio", self.ratio)
        _check_choice(name, "importance", self.importance, ("l1", "l2", "taylor", "activation"))

    @property
    def needs_calibration(self) -> bool:  # type: ignore[override]
        return self.importance in ("taylor", "activation")



@register
@dataclass(frozen=True)
class MagnitudePrune(_Masking):
    """Unstructured magnitude pruning: zero the ``ratio`` smallest |W| of each layer."""

    family: ClassVar[Family] = "prune"
    method: ClassVar[str] = "magnitude"
    fake_weight: ClassVar[str | None] = "w_magnitude"
    ratio: float = 0.5

    def __post_init__(self) -> None:
        _check_fraction(type(self).__name__, "ratio", self.ratio)


    def apply_mask(self, module: Any, targets: list[str], calib: Any, input_names: list[str],
                   stats: Mapping[str, Any]) -> dict[str, float]:
        from devicefit.compressor.prune.magnitude import magnitude_prune

        return magnitude_prune(module, dict.fromkeys(targets, self.ratio))


@register
@dataclass(frozen=True)
class WandaPrune(_Masking):
    """Unstructured Wanda pruning: score |W|·‖X‖ per input channel from calibration activations."""

    family: ClassVar[Family] = "prune"
    method: ClassVar[str] = "wanda"
    needs_calibration: ClassVar[bool] = True
    fake_weight: ClassVar[str | None] = "w_magnitude"  # scored as magnitude
    ratio: float = 0.5

    def __post_init__(self) -> None:
        _check_fraction(type(self).__name__, "ratio", self.ratio)


    def apply_mask(self, module: Any, targets: list[str], calib: Any, input_names: list[str],
                   stats: Mapping[str, Any]) -> dict[str, float]:
        from devicefit.compressor.prune.wanda import wanda_prune

        assert calib is not None
        return wanda_prune(module, dict.fromkeys(targets, self.ratio), calib, input_names, stats=stats)


@register
@dataclass(frozen=True)
class SemiStructuredPrune(_Masking):
    """N:M semi-structured pruning: keep ``n`` of every ``m`` weights along the input dimension."""

    family: ClassVar[Family] = "prune"
    method: ClassVar[str] = "nm"
    #: written ``N:M`` on the command line (:meth:`from_cli_text`)
    cli_names: ClassVar[Mapping[str, Mapping[str, Any]] | None] = {}
    cli_syntax: ClassVar[str | None] = "N:M (e.g. 2:4)"
    fake_weight: ClassVar[str | None] = "w_nm"
    n: int = 2
    m: int = 4
    importance: str = "magnitude"

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not (isinstance(self.m, int) and self.m >= 2):
            raise _fail(name, "m", self.m, "an integer ≥ 2")
        if not (isinstance(self.n, int) and 0 < self.n < self.m):
            raise _fail(name, "n", self.n, f"an integer in [1, m={self.m})")
        _check_choice(name, "importance", self.importance, ("magnitude", "wanda"))

    @classmethod
    def from_cli_text(cls, text: str) -> Technique | None:
        n, sep, m = text.partition(":")
        return cls(n=int(n), m=int(m)) if sep and n.isdigit() and m.isdigit() else None


    def apply_mask(self, module: Any, targets: list[str], calib: Any, input_names: list[str],
                   stats: Mapping[str, Any]) -> dict[str, float]:
        from devicefit.compressor.prune.nm import nm_prune

        return nm_prune(module, targets, n=self.n, m=self.m, importance=self.importance, stats=stats)


# ------------------------------------------------------------------------------------------- lowrank
#: ``refit`` (:mod:`devicefit.compressor.lowrank.refit`) + the one-shot methods of :mod:`~devicefit.compressor.lowrank.asvd`
ASVD_METHODS = ("refit", "whiten", "scale")


@register
@dataclass(frozen=True)
class LowRank(Technique):
    """Low-rank factorization. ``ratio`` is the fraction of the layer's params removed; or give ``energy``
    (fraction of singular-value energy retained) to pick the rank per layer.

    kinds: ``svd`` (truncated SVD of Linear), ``asvd`` (activation-aware SVD), ``tucker2`` and ``spatial``
    (conv decompositions). ``asvd_method`` (``kind="asvd"``): ``refit`` (layer by layer, weighted by the model
    output — best), ``whiten`` / ``scale`` (one shot from input statistics — much faster; the search's
    candidates use ``whiten``), see :func:`~devicefit.compressor.lowrank.apply_lowrank`.
    """

    family: ClassVar[Family] = "lowrank"
    method: ClassVar[str] = "lowrank"
    formats: ClassVar[tuple[str, ...]] = ("onnx", "tflite")
    cli_names: ClassVar[Mapping[str, Mapping[str, Any]] | None] = {
        k: {"kind": k} for k in ("svd", "asvd", "tucker2", "spatial")
    }
    cli_number: ClassVar[str | None] = "ratio"
    search_default: ClassVar[bool] = True
    search_ratios: ClassVar[tuple[float, ...]] = (0.5,)
    # one-shot whitened ASVD: the layer-by-layer refit costs minutes per candidate on MiniLM
    search_settings: ClassVar[Mapping[str, Any]] = {"kind": "asvd", "asvd_method": "whiten"}
    structural_stage: ClassVar[StructuralStage | None] = "factorize"
    fake_weight: ClassVar[str | None] = "w_lowrank"
    ratio: float | None = 0.5
    kind: str = "svd"
    energy: float | None = None
    asvd_method: str = field(default="refit", metadata=OMIT_DEFAULT)

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_choice(name, "kind", self.kind, ("svd", "asvd", "tucker2", "spatial"))
        _check_choice(name, "asvd_method", self.asvd_method, ASVD_METHODS)
        if self.kind != "asvd" and self.asvd_method != "refit":  # only ASVD reads it: keep plans canonical
            object.__setattr__(self, "asvd_method", "refit")
        if (self.ratio is None) == (self.energy is None):
            raise UserInputError(
                f"{name}(ratio={self.ratio!r}, energy={self.energy!r}) sets both or neither",
                "give exactly one of ratio (fraction of params removed) or energy (fraction retained)",
            )
        if self.ratio is not None:
            _check_fraction(name, "ratio", self.ratio)
        if self.energy is not None:
            _check_fraction(name, "energy", self.energy)

    @property
    def needs_calibration(self) -> bool:  # type: ignore[override]
        return self.kind == "asvd"

    @classmethod
    def from_cli(cls, fixed: Mapping[str, Any], options: dict[str, Any]) -> Technique:
        if "energy" in options and "ratio" not in options:
            options = {**options, "ratio": None}
        return super().from_cli(fixed, options)



# --------------------------------------------------------------------------------------------- quant
CALIBRATIONS = ("minmax", "percentile", "entropy", "mse")
#: weight rounding of ``Int8Static`` (``gptq``: output-aware, :mod:`devicefit.compressor.quant.recovery.rounding`)
ROUNDINGS = ("nearest", "gptq")


class _Quant(Technique):
    """Shared by the quant family: options are ``k=v`` on the command line."""

    family: ClassVar[Family] = "quant"


@register
@dataclass(frozen=True)
class Int8Dynamic(_Quant):
    """int8 weights, activations quantized per batch at run time (no calibration). An LSTM runs onnxruntime's
    ``DynamicQuantizeLSTM``; a GRU has no such kernel (use ``int8_weight_only``)."""

    method: ClassVar[str] = "int8_dynamic"
    layer_types: ClassVar[tuple[str, ...]] = ("linear", "conv", "lstm")
    #: TFLite: dynamic-range int8 (int8 weights, activations quantized at run time by LiteRT's hybrid kernels)
    formats: ClassVar[tuple[str, ...]] = ("onnx", "tflite")
    search_default: ClassVar[bool] = True
    compute_dtype: ClassVar[str] = "int8dyn"
    onnx_pass: ClassVar[OnnxPass | None] = "dynamic"
    fake_weight: ClassVar[str | None] = "w_int8"
    fake_activation: ClassVar[str | None] = "dynamic"
    int_compute: ClassVar[bool] = True
    per_channel: bool = True



@register
@dataclass(frozen=True)
class Int8Static(_Quant):
    """int8 weights and activations, activation ranges from calibration data (W8A8)."""

    method: ClassVar[str] = "int8_static"
    needs_calibration: ClassVar[bool] = True
    formats: ClassVar[tuple[str, ...]] = ("onnx", "tflite")
    search_default: ClassVar[bool] = True
    compute_dtype: ClassVar[str] = "int8"
    onnx_pass: ClassVar[OnnxPass | None] = "static"
    fake_weight: ClassVar[str | None] = "w_int8"
    fake_activation: ClassVar[str | None] = "static"
    int_compute: ClassVar[bool] = True
    #: the search's candidates are quantized the quick way (minmax, nearest rounding, no bias correction): the
    #: recovery below costs 2-5x the quantization time per candidate (MiniLM ~110 -> ~230 s on the 2-core CI
    #: host), and a fit materializes many int8 static plans. ``compress`` and explicit plans get the defaults.
    search_settings: ClassVar[Mapping[str, Any]] = {"calibration": "minmax", "rounding": "nearest",
                                                    "bias_correction": False, "distill_steps": 0}
    #: ... and the fit's chosen plan gets them all back, plus quantization-aware distillation (same ops, so the
    #: same latency; EfficientNet-Lite0, 320 photo crops: top-1 agreement 0.616 with minmax alone (7-bit weights),
    #: 0.878-0.894 with the defaults, 0.938 with 150 distillation steps on top — on the zoo split, whose evaluation
    #: crops mirror calibration crops; on unseen photos distillation halves the logit error but top-1 agreement
    #: stays within noise, docs/concepts/quantization-accuracy.md)
    quick_fields: ClassVar[tuple[str, ...]] = ("calibration", "rounding", "bias_correction", "distill_steps")
    finish_settings: ClassVar[Mapping[str, Any]] = {"distill_steps": defaults.FINISH_QAD_STEPS}
    #: the defaults are the recovery measured best (EfficientNet-Lite0 on 320 photo crops, 7-bit weights:
    #: top-1 agreement 0.616 with minmax alone -> 0.878; MiniLM cosine 0.9886 -> >= 0.99; bench/accuracy_recovery.py)
    calibration: str = "mse"
    per_channel: bool = True
    percentile: float = 99.999
    #: after quantizing, fold each layer's measured output mean shift into its bias
    #: (:func:`devicefit.compressor.quant.recovery.correct_biases`; one more pass over the calibration data)
    bias_correction: bool = field(default=True, metadata=OMIT_DEFAULT)
    #: how the int8 weights are rounded: ``nearest``, or ``gptq`` (output-aware re-rounding on the same grid
    #: from the calibration inputs, :func:`devicefit.compressor.quant.recovery.round_weights`; before bias
    #: correction)
    rounding: str = field(default="gptq", metadata=OMIT_DEFAULT)
    #: quantization-aware distillation, last: Adam steps training the int8 weights and biases of the QDQ graph
    #: (fake-quant, straight-through rounding) against the fp32 graph on the calibration data, best held-out
    #: checkpoint kept (:func:`devicefit.compressor.quant.recovery.distill`; CNN ops only; 0 = off)
    distill_steps: int = field(default=0, metadata=OMIT_DEFAULT)
    #: its learning rate, in integer grid steps per Adam step
    distill_lr: float = field(default=0.02, metadata=OMIT_DEFAULT)
    #: learning rate of the activation scales during distillation (LSQ, relative change per Adam step; 0 = the
    #: calibrated scales stay); learned scales are written back, int32 biases requantized to match
    distill_scale_lr: float = field(default=0.0, metadata=OMIT_DEFAULT)
    #: its learning-rate schedule: ``constant``, or ``cosine`` (annealed to 0 over ``distill_steps``)
    distill_schedule: str = field(default="constant", metadata=OMIT_DEFAULT)
    #: train on random-resized crops + horizontal flips of the calibration images (teacher run on each), not on
    #: the images themselves (image models: one NCHW float input; ignored otherwise); the held-out quarter stays
    distill_augment: bool = field(default=False, metadata=OMIT_DEFAULT)
    #: the values ``distill_schedule`` accepts
    DISTILL_SCHEDULES: ClassVar[tuple[str, ...]] = ("constant", "cosine")

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_choice(name, "calibration", self.calibration, CALIBRATIONS)
        _check_choice(name, "rounding", self.rounding, ROUNDINGS)
        _check_choice(name, "distill_schedule", self.distill_schedule, self.DISTILL_SCHEDULES)
        if not isinstance(self.distill_augment, bool):
            raise _fail(name, "distill_augment", self.distill_augment, "true or false")
        if not isinstance(self.distill_steps, int) or isinstance(self.distill_steps, bool) or self.distill_steps < 0:
            raise _fail(name, "distill_steps", self.distill_steps, "an integer >= 0")
        if (not isinstance(self.distill_lr, (int, float)) or isinstance(self.distill_lr, bool)
                or not (0.0 < self.distill_lr <= 1.0)):
            raise _fail(name, "distill_lr", self.distill_lr, "a number in (0, 1]")
        if (not isinstance(self.distill_scale_lr, (int, float)) or isinstance(self.distill_scale_lr, bool)
                or not (0.0 <= self.distill_scale_lr <= 0.1)):
            raise _fail(name, "distill_scale_lr", self.distill_scale_lr, "a number in [0, 0.1]")
        if not (50.0 < self.percentile <= 100.0):
            raise _fail(name, "percentile", self.percentile, "a number in (50, 100]")



@register
@dataclass(frozen=True)
class Int8WeightOnly(_Quant):
    """int8 weights (per output channel), float activations; dequantized at load/run time. On a GRU / LSTM
    (W and R, one scale per gate row) it is storage only: 4x smaller, float compute. The search offers it on
    recurrent layers only (a GRU has no integer kernel in onnxruntime; Linear / Conv have int8 / int4)."""

    method: ClassVar[str] = "int8_weight_only"
    layer_types: ClassVar[tuple[str, ...]] = ("linear", "conv", "gru", "lstm")
    search_default: ClassVar[bool] = True
    search_layer_types: ClassVar[tuple[str, ...] | None] = ("gru", "lstm")
    compute_dtype: ClassVar[str] = "int8w"
    onnx_pass: ClassVar[OnnxPass | None] = "weights"
    fake_weight: ClassVar[str | None] = "w_int8"
    per_channel: bool = True


    def quantize_layer(self, ctx: Any, layer: str, nodes: list[Any]) -> None:
        from devicefit.compressor.quant.weight_only import int8_weight_only

        for ln in nodes:
            int8_weight_only(ctx, ln, per_channel=self.per_channel)

    def runs_int(self, is_linear: bool) -> bool:
        return is_linear  # a Linear runs 8-bit MatMulNBits; a Conv keeps float compute (storage only)


@register
@dataclass(frozen=True)
class Int4WeightOnly(_Quant):
    """int4 weights in groups of ``group_size`` along the input dim (onnxruntime ``MatMulNBits``)."""

    method: ClassVar[str] = "int4_weight_only"
    layer_types: ClassVar[tuple[str, ...]] = ("linear",)
    cli_names: ClassVar[Mapping[str, Mapping[str, Any]] | None] = {
        "int4": {"algorithm": "rtn"}, "int4_gptq": {"algorithm": "gptq"}, "int4_awq": {"algorithm": "awq"},
    }
    search_default: ClassVar[bool] = True
    compute_dtype: ClassVar[str] = "int4w"
    onnx_pass: ClassVar[OnnxPass | None] = "weights"
    fake_weight: ClassVar[str | None] = "w_int4"  # GPTQ / AWQ scored as RTN (an upper bound on their drop)
    int_compute: ClassVar[bool] = True
    group_size: int = 32
    algorithm: str = "rtn"

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.group_size not in (16, 32, 64, 128, 256):
            raise _fail(name, "group_size", self.group_size, "one of 16, 32, 64, 128, 256")
        _check_choice(name, "algorithm", self.algorithm, ("rtn", "gptq", "awq"))

    @property
    def needs_calibration(self) -> bool:  # type: ignore[override]
        return self.algorithm != "rtn"

    @property
    def calib_stat(self) -> str | None:
        return {"gptq": "hessian", "awq": "inputs"}.get(self.algorithm)

    def extra_weight_bytes(self, params: float) -> float:
        return params / self.group_size * 4.0  # one fp32 scale (+ packed zero point) per group


    def quantize_layer(self, ctx: Any, layer: str, nodes: list[Any]) -> None:
        from devicefit.compressor.quant.weight_only import int4_weight_only

        for ln in nodes:
            int4_weight_only(ctx, layer, ln, group_size=self.group_size, algorithm=self.algorithm)


@register
@dataclass(frozen=True)
class SmoothQuant(_Quant):
    """W8A8 with SmoothQuant: migrate activation outliers into weights by per-channel scales^alpha."""

    method: ClassVar[str] = "smoothquant"
    layer_types: ClassVar[tuple[str, ...]] = ("linear",)
    needs_calibration: ClassVar[bool] = True
    compute_dtype: ClassVar[str] = "int8"
    onnx_pass: ClassVar[OnnxPass | None] = "static"
    fake_weight: ClassVar[str | None] = "w_int8"
    fake_activation: ClassVar[str | None] = "static"
    int_compute: ClassVar[bool] = True
    alpha: float = 0.5
    calibration: str = "minmax"

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not (0.0 <= self.alpha <= 1.0):
            raise _fail(name, "alpha", self.alpha, "a number in [0, 1]")
        _check_choice(name, "calibration", self.calibration, CALIBRATIONS)

    @property
    def calib_stat(self) -> str | None:
        return "absmax"  # the activations' per-channel maxima the smoothing scales come from



@register
@dataclass(frozen=True)
class Float16(_Quant):
    """Store (and where the runtime can, compute) the layer in float16."""

    method: ClassVar[str] = "float16"
    formats: ClassVar[tuple[str, ...]] = ("onnx", "tflite")
    compute_dtype: ClassVar[str] = "fp16"
    onnx_pass: ClassVar[OnnxPass | None] = "storage"
    fake_weight: ClassVar[str | None] = "w_fp16"


    def quantize_layer(self, ctx: Any, layer: str, nodes: list[Any]) -> None:
        from devicefit.compressor.quant import weights

        for ln in nodes:
            weights.float16(ctx.model, ln)


@register
@dataclass(frozen=True)
class KeepFloat(_Quant):
    """Leave the layer in float32 (explicit opt-out inside a quantized plan)."""

    method: ClassVar[str] = "float"
    layer_types: ClassVar[tuple[str, ...]] = ("linear", "conv", "gru", "lstm")
    formats: ClassVar[tuple[str, ...]] = ("onnx", "tflite")
    onnx_pass: ClassVar[OnnxPass | None] = "keep"


#: group sizes of devicefit's ``LowBitMatMul`` kernel (:data:`devicefit.kernels.pack.GROUP_SIZES`)
LOWBIT_GROUP_SIZES = (32, 64, 128, 256)
LOWBIT_BITS = (2, 3)


@register
@dataclass(frozen=True)
class Sparse24Int8(_Quant):
    """2:4 semi-structured sparse int8 weights: in every 4 consecutive inputs the 2 largest |w| are kept
    (weights already 2:4, e.g. from an ``nm`` 2:4 prune stage, keep their pattern), symmetric int8 per output
    channel; activations quantized per row (symmetric int8) inside devicefit's ``Sparse24MatMul`` kernel. Without
    the kernels it is the bit-identical ``MatMulInteger`` form (:mod:`devicefit.compressor.quant.kernel_layers`)."""

    method: ClassVar[str] = "int8_sparse24"
    layer_types: ClassVar[tuple[str, ...]] = ("linear",)
    cli_names: ClassVar[Mapping[str, Mapping[str, Any]] | None] = {"int8_sparse24": {}, "sparse24": {}}
    needs_kernels: ClassVar[bool] = True
    search_default: ClassVar[bool] = True
    compute_dtype: ClassVar[str] = "s24"
    onnx_pass: ClassVar[OnnxPass | None] = "weights"
    fake_weight: ClassVar[str | None] = "w_s24_int8"
    fake_activation: ClassVar[str | None] = "dynamic"
    int_compute: ClassVar[bool] = True
    importance: str = "magnitude"
    #: with calibration data (optional), fold what pruning and rounding take away on average, ``(W - W_kept) · E[x]``,
    #: into the bias (a small MLP's 2:4 layer: cosine vs fp32 0.90 -> 0.99; MiniLM's FFNs: 0.769 -> 0.758, no help
    #: there: 2:4 pruning + distillation, what a fit's finish does, reaches 0.953)
    bias_correction: bool = field(default=True, metadata=OMIT_DEFAULT)

    def __post_init__(self) -> None:
        _check_choice(type(self).__name__, "importance", self.importance, ("magnitude",))
        if not isinstance(self.bias_correction, bool):
            raise _fail(type(self).__name__, "bias_correction", self.bias_correction, "true or false")

    @property
    def calib_stat(self) -> str | None:
        return "inputs" if self.bias_correction else None  # the input means (only when data is given)

    def finish_structure(self) -> Technique | None:
        """2:4 magnitude pruning before the finish's distillation: the fine-tuned weights keep the pattern, which
        the packing then keeps (it prunes only weights that are not 2:4 already)."""
        return SemiStructuredPrune(n=2, m=4)

    def quantize_layer(self, ctx: Any, layer: str, nodes: list[Any]) -> None:
        from devicefit.compressor.quant.kernel_layers import sparse24_layer

        for ln in nodes:
            sparse24_layer(ctx, ln)


@register
@dataclass(frozen=True)
class LowBitWeightOnly(_Quant):
    """2- or 3-bit weights in groups of ``group_size`` along the input dim (asymmetric, a scale and a zero point
    per group), by round-to-nearest or GPTQ; devicefit's ``LowBitMatMul`` kernel (activations int8 per group
    inside it). Without the kernels the same codes run in onnxruntime's 4-bit ``MatMulNBits`` (float
    activations). The search offers ``bits=3`` (RTN, the cheap candidate): 2-bit loses too much to be worth one
    (zoo:minilm-l6, all 36 Linears at group 128, mean cosine of the output vs fp32 on 128 eval sentences:
    3-bit RTN 0.823, GPTQ 0.926; 2-bit RTN 0.300, GPTQ 0.414; int4 RTN group 32 0.974); ask for ``int2_gptq``
    explicitly."""

    method: ClassVar[str] = "lowbit_weight_only"
    layer_types: ClassVar[tuple[str, ...]] = ("linear",)
    cli_names: ClassVar[Mapping[str, Mapping[str, Any]] | None] = {
        "int2": {"bits": 2, "algorithm": "rtn"}, "int3": {"bits": 3, "algorithm": "rtn"},
        "int2_gptq": {"bits": 2, "algorithm": "gptq"}, "int3_gptq": {"bits": 3, "algorithm": "gptq"},
    }
    needs_kernels: ClassVar[bool] = True
    search_default: ClassVar[bool] = True
    search_settings: ClassVar[Mapping[str, Any]] = {"bits": 3}
    onnx_pass: ClassVar[OnnxPass | None] = "weights"
    fake_weight: ClassVar[str | None] = "w_lowbit"  # GPTQ scored as RTN (an upper bound on its drop)
    int_compute: ClassVar[bool] = True
    bits: int = 2
    group_size: int = 128
    algorithm: str = "rtn"

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.bits not in LOWBIT_BITS or isinstance(self.bits, bool):
            raise _fail(name, "bits", self.bits, "2 or 3")
        if self.group_size not in LOWBIT_GROUP_SIZES or isinstance(self.group_size, bool):
            raise _fail(name, "group_size", self.group_size,
                        "one of " + ", ".join(map(str, LOWBIT_GROUP_SIZES)) + " (the LowBitMatMul kernel's group sizes)")
        _check_choice(name, "algorithm", self.algorithm, ("rtn", "gptq"))

    @property
    def compute_dtype(self) -> str:  # type: ignore[override]
        """``lowbit2w`` / ``lowbit3w`` (latency cost classes of :mod:`devicefit.compressor.latency.roofline`)."""
        return f"lowbit{self.bits}w"

    @property
    def needs_calibration(self) -> bool:  # type: ignore[override]
        """GPTQ needs the layer inputs' Hessians from calibration data; RTN needs none."""
        return self.algorithm == "gptq"

    @property
    def calib_stat(self) -> str | None:
        return "hessian" if self.algorithm == "gptq" else None

    def extra_weight_bytes(self, params: float) -> float:
        return params / self.group_size * 5.0  # one fp32 scale + one uint8 zero point per group

    def quantize_layer(self, ctx: Any, layer: str, nodes: list[Any]) -> None:
        from devicefit.compressor.quant.kernel_layers import lowbit_layer

        for ln in nodes:
            lowbit_layer(ctx, layer, ln, bits=self.bits, group_size=self.group_size, algorithm=self.algorithm)


# ------------------------------------------------------------------------------------------ distill
@dataclass(frozen=True)
class Distill:
    """Knowledge distillation: teacher = original model, student = compressed one.

    Budget: ``steps`` or ``epochs`` or ``seconds`` (the first reached ends training). Loss = KL on
    logits at ``temperature`` (or MSE on outputs for embedding models) + ``hidden_mse`` × hidden-state MSE.
    """

    steps: int | None = 200
    epochs: float | None = None
    seconds: float | None = None
    temperature: float = 4.0
    hidden_mse: float = 0.0
    lr: float = 1e-4
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.steps is None and self.epochs is None and self.seconds is None:
            raise UserInputError("Distill has no budget", "set steps, epochs or seconds")
        for name in ("steps", "epochs", "seconds"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
                raise _fail("Distill", name, v, "a positive number or null")
        if self.temperature <= 0:
            raise _fail("Distill", "temperature", self.temperature, "> 0")
        if self.hidden_mse < 0:
            raise _fail("Distill", "hidden_mse", self.hidden_mse, "≥ 0")
        if self.lr <= 0:
            raise _fail("Distill", "lr", self.lr, "> 0")
        if self.batch_size <= 0:
            raise _fail("Distill", "batch_size", self.batch_size, "a positive integer")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def technique_from_dict(family: Family, data: dict[str, Any]) -> Technique:
    """Inverse of ``Technique.to_dict`` for the given family; unknown methods/fields name the options.
    Method names accept ``-`` for ``_``."""
    if not isinstance(data, dict) or "method" not in data:
        raise UserInputError(f"{family} entry {data!r} has no 'method'", f"write e.g. {{method: ...}} for {family}")
    method = data["method"]
    cls = TECHNIQUES.get((family, canonical_name(method))) if isinstance(method, str) else None
    if cls is None:
        valid = sorted(m for f, m in TECHNIQUES if f == family)
        raise UserInputError(f"unknown {family} method {method!r}", f"use one of {', '.join(valid)}")
    kwargs = {k: v for k, v in data.items() if k != "method"}
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise UserInputError(
            f"{cls.__name__} has no field(s) {unknown}", f"valid fields: {', '.join(sorted(known)) or '(none)'}"
        )
    return cls(**kwargs)
