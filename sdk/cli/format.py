"""Numbers for people: milliseconds, percentages, sizes and ratios with a precision that fits their size.

Only the human renderings of the CLI use these; ``--json`` keeps the raw numbers. Each returns ``–`` for a
missing or non-finite value.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

DASH = "–"


def _number(fn: Callable[[float], str]) -> Callable[[float | None], str]:
    """``fn`` for finite numbers, :data:`DASH` for None, NaN, ±inf and non-numbers."""

    @functools.wraps(fn)
    def wrapper(x: float | None) -> str:
        if x is None or isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            return DASH
        return fn(float(x))

    return wrapper


@_number
def ms(x: float) -> str:
    """A latency: ``0.012 ms``, ``0.512 ms``, ``4.27 ms``, ``42.7 ms``, ``427 ms`` (about 3 significant digits)."""
    a = abs(x)
    if a >= 100:
        return f"{x:.0f} ms"
    if a >= 10:
        return f"{x:.1f} ms"
    if a >= 1:
        return f"{x:.2f} ms"
    if a >= 0.1 or a == 0:
        return f"{x:.3f} ms"
    return f"{x:.2g} ms"


@_number
def pct(x: float) -> str:
    """A fraction as a percentage: ``0.16102943`` → ``16.1%``."""
    return f"{100 * x:.1f}%"


@_number
def points(x: float) -> str:
    """A metric drop (fraction of a 0–1 metric) in percentage points: ``0.0034`` → ``0.34 pt``."""
    return f"{100 * x:.2f} pt"


@_number
def mb(n_bytes: float) -> str:
    """A size in bytes as megabytes (10⁶): ``1234567`` → ``1.23 MB``."""
    v = n_bytes / 1e6
    return f"{v:.0f} MB" if abs(v) >= 100 else f"{v:.2f} MB" if abs(v) >= 0.01 else f"{v:.4f} MB"


@_number
def ratio(x: float) -> str:
    """A factor: ``2.0`` → ``2.00×``."""
    return f"{x:.2f}×"


@_number
def num(x: float) -> str:
    """A metric value (accuracy, cosine…) with 4 decimals."""
    return f"{x:.4f}"
