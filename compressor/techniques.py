"""Technique configs: one frozen dataclass per compression scheme, registered by (family, method).

Families are applied in the order prune → lowrank → distill → quant (see ``Plan``). Every config validates
itself at construction and names the field, the value and what would be valid. The search and the CLI read
the registry (``TECHNIQUES``) and each config's declared capabilities instead of if-chains.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Literal

from devicefit.errors import UserInputError

Family = Literal["prune", "lowrank", "quant"]
FAMILIES: tuple[Family, ...] = ("prune", "lowrank", "quant")


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
    """Base of every technique config."""

    family: ClassVar[Family]
    method: ClassVar[str]
    #: layer kinds the technique can act on ("linear", "conv")
    layer_types: ClassVar[tuple[str, ...]] = ("linear", "conv")
    #: needs calibration data (activations) to be applied
    needs_calibration: ClassVar[bool] = False
    #: export formats that can carry the result
    formats: ClassVar[tuple[str, ...]] = ("onnx",)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **asdict(self)}

    def label(self) -> str:
        """Short human label, e.g. ``int4_weight_only(group_size=32,method=gptq)``."""
        args = ",".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))
        return f"{self.method}({args})" if args else self.method


# --------------------------------------------------------------------------------------------- prune
@dataclass(frozen=True)
class MagnitudePrune(Technique):
    """Unstructured magnitude pruning: zero the ``ratio`` smallest |W| of each layer."""

    family: ClassVar[Family] = "prune"
    method: ClassVar[str] = "magnitude"
    ratio: float = 0.5

    def __post_init__(self) -> None:
        _check_fraction(type(self).__name__, "ratio", self.ratio)


@dataclass(frozen=True)
class WandaPrune(Technique):
    """Unstructured Wanda pruning: score |W|·‖X‖ per input channel from calibration activations."""

    family: ClassVar[Family] = "prune"
    method: ClassVar[str] = "wanda"
    needs_calibration: ClassVar[bool] = True
    ratio: float = 0.5

    def __post_init__(self) -> None:
        _check_fraction(type(self).__name__, "ratio", self.ratio)


@dataclass(frozen=True)
class SemiStructuredPrune(Technique):
    """N:M semi-structured pruning: keep ``n`` of every ``m`` weights along the input dimension."""

    family: ClassVar[Family] = "prune"
    method: ClassVar[str] = "nm"
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


@dataclass(frozen=True)
class ChannelPrune(Technique):
    """Structured pruning: remove ``ratio`` of whole filters / neurons / heads with their dependents."""

    family: ClassVar[Family] = "prune"
    method: ClassVar[str] = "structured"
    formats: ClassVar[tuple[str, ...]] = ("onnx", "tflite")
    ratio: float = 0.3
    importance: str = "l2"
    global_ranking: bool = False

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_fraction(name, "ratio", self.ratio)
        _check_choice(name, "importance", self.importance, ("l1", "l2", "taylor", "activation"))


# ------------------------------------------------------------------------------------------- lowrank
@dataclass(frozen=True)
class LowRank(Technique):
    """Low-rank factorization. ``ratio`` is the fraction of the layer's params removed; or give ``energy``
    (fraction of singular-value energy retained) to pick the rank per layer.

    methods: ``svd`` (truncated SVD of Linear), ``asvd`` (activation-aware SVD), ``tucker2`` and
    ``spatial`` (conv decompositions).
    """

    family: ClassVar[Family] = "lowrank"
    method: ClassVar[str] = "lowrank"
    formats: ClassVar[tuple[str, ...]] = ("onnx", "tflite")
    ratio: float | None = 0.5
    kind: str = "svd"
    energy: float | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_choice(name, "kind", self.kind, ("svd", "asvd", "tucker2", "spatial"))
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


# --------------------------------------------------------------------------------------------- quant
CALIBRATIONS = ("minmax", "percentile", "entropy", "mse")


@dataclass(frozen=True)
class KeepFloat(Technique):
    """Leave the layer in float32 (explicit opt-out inside a quantized plan)."""

    family: ClassVar[Family] = "quant"
    method: ClassVar[str] = "float"
    formats: ClassVar[tuple[str, ...]] = ("onnx", "tflite")


@dataclass(frozen=True)
class Float16(Technique):
    """Store (and where the runtime can, compute) the layer in float16."""

    family: ClassVar[Family] = "quant"
    method: ClassVar[str] = "float16"
    formats: ClassVar[tuple[str, ...]] = ("onnx", "tflite")


@dataclass(frozen=True)
class Int8WeightOnly(Technique):
    """int8 weights (per output channel), float activations; dequantized at load/run time."""

    family: ClassVar[Family] = "quant"
    method: ClassVar[str] = "int8_weight_only"
    per_channel: bool = True


@dataclass(frozen=True)
class Int4WeightOnly(Technique):
    """int4 weights in groups of ``group_size`` along the input dim (onnxruntime ``MatMulNBits``)."""

    family: ClassVar[Family] = "quant"
    method: ClassVar[str] = "int4_weight_only"
    layer_types: ClassVar[tuple[str, ...]] = ("linear",)
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


@dataclass(frozen=True)
class Int8Dynamic(Technique):
    """int8 weights, activations quantized per batch at run time (no calibration)."""

    family: ClassVar[Family] = "quant"
    method: ClassVar[str] = "int8_dynamic"
    per_channel: bool = True


@dataclass(frozen=True)
class Int8Static(Technique):
    """int8 weights and activations, activation ranges from calibration data (W8A8)."""

    family: ClassVar[Family] = "quant"
    method: ClassVar[str] = "int8_static"
    needs_calibration: ClassVar[bool] = True
    formats: ClassVar[tuple[str, ...]] = ("onnx", "tflite")
    calibration: str = "minmax"
    per_channel: bool = True
    percentile: float = 99.999

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_choice(name, "calibration", self.calibration, CALIBRATIONS)
        if not (50.0 < self.percentile <= 100.0):
            raise _fail(name, "percentile", self.percentile, "a number in (50, 100]")


@dataclass(frozen=True)
class SmoothQuant(Technique):
    """W8A8 with SmoothQuant: migrate activation outliers into weights by per-channel scales^alpha."""

    family: ClassVar[Family] = "quant"
    method: ClassVar[str] = "smoothquant"
    layer_types: ClassVar[tuple[str, ...]] = ("linear",)
    needs_calibration: ClassVar[bool] = True
    alpha: float = 0.5
    calibration: str = "minmax"

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not (0.0 <= self.alpha <= 1.0):
            raise _fail(name, "alpha", self.alpha, "a number in [0, 1]")
        _check_choice(name, "calibration", self.calibration, CALIBRATIONS)


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


# ----------------------------------------------------------------------------------------- registry
TECHNIQUES: dict[tuple[Family, str], type[Technique]] = {
    (cls.family, cls.method): cls
    for cls in (
        MagnitudePrune,
        WandaPrune,
        SemiStructuredPrune,
        ChannelPrune,
        LowRank,
        KeepFloat,
        Float16,
        Int8WeightOnly,
        Int4WeightOnly,
        Int8Dynamic,
        Int8Static,
        SmoothQuant,
    )
}


def technique_from_dict(family: Family, data: dict[str, Any]) -> Technique:
    """Inverse of ``Technique.to_dict`` for the given family; unknown methods/fields name the options."""
    if not isinstance(data, dict) or "method" not in data:
        raise UserInputError(f"{family} entry {data!r} has no 'method'", f"write e.g. {{method: ...}} for {family}")
    method = data["method"]
    cls = TECHNIQUES.get((family, method))
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
