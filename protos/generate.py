"""Regenerate the Python stubs of the wire contract (``make protos``).

Runs grpc_tools.protoc on ``protos/devicefit/v1/*.proto`` (include root ``protos/``) and writes
``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` next to the .proto files, then rewrites protoc's absolute
imports (``from devicefit.v1 import x_pb2``) to the installed package path
(``from devicefit.protos.devicefit.v1 import x_pb2``). ``tests/protos/test_stubs_fresh.py`` regenerates
into a temporary directory and fails when the checked-in stubs differ.

Usage: python protos/generate.py [--out DIR]   (DIR receives devicefit/v1/…; default: protos/)
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import resources
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_DIR = PROTO_ROOT / "devicefit" / "v1"
PACKAGE_PREFIX = "devicefit.protos."
_IMPORT_RE = re.compile(r"^(\s*)from devicefit\.v1 import ", re.MULTILINE)
_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_root: Path = PROTO_ROOT) -> list[Path]:
    """Generate the stubs under ``out_root/devicefit/v1``; returns the generated files (sorted)."""
    from grpc_tools import protoc

    out_root = Path(out_root)
    (out_root / "devicefit" / "v1").mkdir(parents=True, exist_ok=True)
    well_known = str(resources.files("grpc_tools") / "_proto")
    rels = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *rels,
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc} on {rels}")
    out = []
    for rel in rels:
        stem = (out_root / rel).with_suffix("")
        for suffix in _SUFFIXES:
            path = stem.parent / (stem.name + suffix)
            if not path.exists():
                continue
            text = path.read_text(encoding="utf-8")
            fixed = _IMPORT_RE.sub(lambda m: f"{m.group(1)}from {PACKAGE_PREFIX}devicefit.v1 import ", text)
            if fixed != text:
                path.write_text(fixed, encoding="utf-8")
            out.append(path)
    return sorted(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="root that receives devicefit/v1/ stubs")
    args = parser.parse_args(argv)
    files = generate(args.out)
    for f in files:
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
