"""Root fixtures. Zoo bundles are session-scoped (loading MiniLM / EfficientNet takes seconds)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
