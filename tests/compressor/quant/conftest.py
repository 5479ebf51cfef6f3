"""Fixtures of the quant tests; helpers live in quant_helpers.py (put on sys.path here)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from quant_helpers import TinyCase, build_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: Any) -> TinyCase:
    """The tiny model, its verified fp32 ONNX export and calibration / evaluation data."""
    return build_tiny(tmp_path_factory)
