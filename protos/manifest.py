"""Artifact manifest: what a model file is (id, version, format, size, sha256, signature, plan, metrics).

Shared by the host (``devicefit.artifact``, transports) and the agent (store, upload); numpy-free, torch-free.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from devicefit.protos.errors import UserInputError

FORMATS = ("onnx", "tflite")
EXTENSIONS = {"onnx": ".onnx", "tflite": ".tflite"}
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
#: the agent refuses single artifacts larger than this (4 GiB)
MAX_ARTIFACT_BYTES = 4 * 1024**3


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def format_for_path(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    for fmt, ext in EXTENSIONS.items():
        if suffix == ext:
            return fmt
    raise UserInputError(
        f"model file {str(path)!r} has extension {suffix!r}", "deploy an .onnx or .tflite file"
    )


def default_model_id(path: str | Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._+-]", "-", Path(path).stem).strip("-.") or "model"
    return stem[:128]


@dataclass(frozen=True)
class Manifest:
    """Validated at construction: ``model_id`` [A-Za-z0-9._+-], ``format`` onnx|tflite, sha256 lowercase hex."""

    model_id: str
    format: str
    size_bytes: int
    sha256: str
    version: str = "1"
    signature: bytes = b""
    signature_key_id: str = ""
    plan_summary: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    created_at: str = ""
    file_name: str = ""

    def __post_init__(self) -> None:
        if not _ID_RE.match(self.model_id or ""):
            raise UserInputError(
                f"manifest model_id {self.model_id!r} is not a valid id",
                "use 1-128 characters from A-Z a-z 0-9 . _ + - (starting with a letter or digit)",
            )
        if self.format not in FORMATS:
            raise UserInputError(f"manifest format {self.format!r} is unknown", f"use one of {', '.join(FORMATS)}")
        if not 0 < int(self.size_bytes) <= MAX_ARTIFACT_BYTES:
            raise UserInputError(
                f"manifest size_bytes={self.size_bytes} is out of range", f"artifacts are 1 B .. {MAX_ARTIFACT_BYTES} B"
            )
        if not _SHA_RE.match(self.sha256 or ""):
            raise UserInputError(
                f"manifest sha256 {self.sha256!r} is not 64 lowercase hex digits", "pass hashlib.sha256(data).hexdigest()"
            )

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]

    @classmethod
    def for_file(
        cls,
        path: str | Path,
        *,
        model_id: str | None = None,
        version: str = "1",
        plan_summary: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> Manifest:
        p = Path(path)
        if not p.is_file():
            raise UserInputError(f"model file {str(p)!r} does not exist", "pass the path of an .onnx or .tflite file")
        return cls(
            model_id=model_id or default_model_id(p),
            format=format_for_path(p),
            size_bytes=p.stat().st_size,
            sha256=sha256_file(p),
            version=version,
            plan_summary=dict(plan_summary or {}),
            metrics=dict(metrics or {}),
            created_at=utc_now(),
            file_name=p.name,
        )

    def with_(self, **changes: Any) -> Manifest:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "version": self.version,
            "format": self.format,
            "size_bytes": int(self.size_bytes),
            "sha256": self.sha256,
            "signature": self.signature.hex(),
            "signature_key_id": self.signature_key_id,
            "plan_summary": dict(self.plan_summary),
            "metrics": dict(self.metrics),
            "created_at": self.created_at,
            "file_name": self.file_name,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        try:
            return cls(
                model_id=str(d["model_id"]),
                format=str(d["format"]),
                size_bytes=int(d["size_bytes"]),
                sha256=str(d["sha256"]),
                version=str(d.get("version", "1")),
                signature=bytes.fromhex(str(d.get("signature", ""))),
                signature_key_id=str(d.get("signature_key_id", "")),
                plan_summary=dict(d.get("plan_summary") or {}),
                metrics=dict(d.get("metrics") or {}),
                created_at=str(d.get("created_at", "")),
                file_name=str(d.get("file_name", "")),
            )
        except KeyError as exc:
            raise UserInputError(f"manifest is missing field {exc.args[0]!r}", "regenerate the manifest") from exc
        except ValueError as exc:
            raise UserInputError(f"manifest has a malformed field: {exc}", "regenerate the manifest") from exc
