"""Artifact: a model file plus its manifest (sha256, size, format, model id, version, plan summary, metrics).

``Artifact.from_file("out/model.onnx", plan=plan, metrics=result.metric.to_dict()).save()`` writes
``out/manifest.json`` next to the model; ``Artifact.load("out/")`` reads it back and checks the file.
No torch: the plan is summarized through its ``to_dict()``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devicefit.errors import UserInputError
from devicefit.protos.manifest import Manifest, sha256_file

MANIFEST_NAME = "manifest.json"


def _summary(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        out = to_dict()
        if isinstance(out, Mapping):
            return dict(out)
    raise UserInputError(f"cannot summarize {type(obj).__name__} for a manifest", "pass a dict or an object with to_dict()")


def safe_file_name(name: str) -> str:
    """``name`` if it is a plain file name (no directory part, no ``..``), else UserInputError: a manifest
    never points outside its own directory."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or Path(name).name != name:
        raise UserInputError(
            f"manifest file_name {name[:200]!r} is not a plain file name in the manifest's directory",
            "regenerate the manifest with Artifact.from_file(path).save()",
        )
    return name


@dataclass(frozen=True)
class Artifact:
    """A model file and its manifest."""

    path: Path
    manifest: Manifest

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        model_id: str | None = None,
        version: str = "1",
        plan: Any = None,
        metrics: Any = None,
    ) -> Artifact:
        p = Path(path)
        return cls(
            p,
            Manifest.for_file(p, model_id=model_id, version=version, plan_summary=_summary(plan), metrics=_summary(metrics)),
        )

    def save(self, manifest_path: str | Path | None = None) -> Path:
        """Write the manifest (default: ``manifest.json`` next to the model file); returns its path."""
        out = Path(manifest_path) if manifest_path is not None else self.path.parent / MANIFEST_NAME
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.manifest.to_dict(), indent=2, sort_keys=True) + "\n")
        return out

    @classmethod
    def load(cls, where: str | Path) -> Artifact:
        """Read a manifest (a ``manifest.json`` path or its directory) and check the model file against it."""
        m_path = Path(where)
        if m_path.is_dir():
            m_path = m_path / MANIFEST_NAME
        if not m_path.is_file():
            raise UserInputError(f"manifest {str(m_path)!r} does not exist", "write it with Artifact.from_file(...).save()")
        try:
            manifest = Manifest.from_dict(json.loads(m_path.read_text()))
        except ValueError as exc:
            raise UserInputError(f"manifest {str(m_path)!r} is not valid JSON: {exc}", "regenerate it") from exc
        art = cls(m_path.parent / safe_file_name(manifest.file_name or f"model{manifest.extension}"), manifest)
        art.verify()
        return art

    def verify(self) -> None:
        """Raise UserInputError when the file is missing or differs from the manifest (size / sha256)."""
        if not self.path.is_file():
            raise UserInputError(f"model file {str(self.path)!r} named by the manifest does not exist", "keep it next to manifest.json")
        size = self.path.stat().st_size
        if size != self.manifest.size_bytes or sha256_file(self.path) != self.manifest.sha256:
            raise UserInputError(
                f"model file {str(self.path)!r} does not match its manifest (size {size} vs {self.manifest.size_bytes} "
                "or sha256 differs)",
                "rebuild the manifest with Artifact.from_file(path).save()",
            )

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), **self.manifest.to_dict()}
