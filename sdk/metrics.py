"""Fidelity and task metrics (numpy only). Values are fractions (accuracy 0.983), SQNR in dB."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def _2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(1, -1)


def cosine(ref: np.ndarray, test: np.ndarray) -> float:
    """Mean per-sample cosine similarity between ``ref`` and ``test`` (first axis = samples)."""
    r, t = _2d(ref), _2d(test)
    num = (r * t).sum(axis=1)
    den = np.linalg.norm(r, axis=1) * np.linalg.norm(t, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-12)))


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is better; ∞ for identical outputs)."""
    r, t = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    noise = float(np.sum((r - t) ** 2))
    if noise == 0.0:
        return float("inf")
    return float(10.0 * np.log10(float(np.sum(r**2)) / noise))


def top1_agreement(ref: np.ndarray, test: np.ndarray) -> float:
    """Fraction of samples whose argmax over the last axis agrees."""
    return float(np.mean(np.argmax(ref, axis=-1) == np.argmax(test, axis=-1)))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels)))


@dataclass(frozen=True)
class MetricResult:
    """A metric of the compressed model next to the fp32 baseline (``drop = baseline - compressed``)."""

    name: str
    baseline: float
    compressed: float
    data: str = ""

    @property
    def drop(self) -> float:
        return self.baseline - self.compressed

    def to_dict(self) -> dict[str, float | str]:
        return {**asdict(self), "drop": self.drop}


def score(metric: str, ref: np.ndarray, test: np.ndarray, labels: np.ndarray | None, *, data: str = "") -> MetricResult:
    """The bundle metric of ``test`` outputs vs fp32 ``ref`` outputs (and labels for accuracy)."""
    if metric == "accuracy":
        if labels is None:
            raise ValueError("accuracy needs labels")
        return MetricResult("accuracy", accuracy(ref, labels), accuracy(test, labels), data)
    if metric == "cosine":
        return MetricResult("cosine", 1.0, cosine(ref, test), data)
    if metric == "top1_agreement":
        return MetricResult("top1_agreement", 1.0, top1_agreement(ref, test), data)
    raise ValueError(f"unknown metric {metric!r}")


def fidelity(ref: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Cosine, SQNR (dB), max abs error and top-1 agreement of ``test`` vs ``ref``."""
    return {
        "cosine": cosine(ref, test),
        "sqnr_db": sqnr_db(ref, test),
        "max_abs_error": float(np.max(np.abs(np.asarray(ref, np.float64) - np.asarray(test, np.float64)))),
        "top1_agreement": top1_agreement(ref, test),
    }
