"""Numbers for people: milliseconds, percentages, sizes and ratios with a precision that fits their size.

Only the human renderings of the CLI use these; ``--json`` keeps the raw numbers.
"""

from __future__ import annotations

import math

DASH = "–"


def _bad(x: float | None) -> bool:
    return x is None or isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x)


def ms(x: float | None) -> str:
    """A latency: ``0.0123 ms``, ``0.512 ms``, ``4.27 ms``, ``42.7 ms``, ``427 ms`` (about 3 significant digits)."""
    if _bad(x):
        return DASH
    assert x is not None
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


def pct(x: float | None, *, digits: int = 1) -> str:
    """A fraction as a percentage: ``0.16102943`` → ``16.1%``."""
    if _bad(x):
        return DASH
    assert x is not None
    return f"{100 * x:.{digits}f}%"


def points(x: float | None) -> str:
    """A metric drop (fraction of a 0–1 metric) in percentage points: ``0.0034`` → ``0.34 pt``."""
    if _bad(x):
        return DASH
    assert x is not None
    return f"{100 * x:.2f} pt"


def mb(n_bytes: float | None) -> str:
    """A size in bytes as megabytes (10⁶): ``1234567`` → ``1.23 MB``."""
    if _bad(n_bytes):
        return DASH
    assert n_bytes is not None
    v = n_bytes / 1e6
    return f"{v:.0f} MB" if abs(v) >= 100 else f"{v:.2f} MB" if abs(v) >= 0.01 else f"{v:.4f} MB"


def ratio(x: float | None) -> str:
    """A factor: ``2.0`` → ``2.00×``."""
    if _bad(x):
        return DASH
    assert x is not None
    return f"{x:.2f}×"


def num(x: float | None, *, digits: int = 4) -> str:
    """A metric value (accuracy, cosine…) with ``digits`` decimals."""
    if _bad(x):
        return DASH
    assert x is not None
    return f"{x:.{digits}f}"
