"""A wheel built from the tree holds every package, the board TOMLs, the .proto files and their stubs,
and works when installed on its own (not only the editable install)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> path inside the wheel (pyproject's package-dir)
PACKAGE_DIRS = {
    "sdk": "devicefit",
    "agent": "devicefit/agent",
    "compressor": "devicefit/compressor",
    "kernels": "devicefit/kernels",
    "protos": "devicefit/protos",
    "device_profiles": "devicefit/device_profiles",
}
IGNORE = shutil.ignore_patterns(
    ".venv", "build", "dist", "*.egg-info", "__pycache__", ".git", ".pytest_cache", ".mypy_cache",
    ".ruff_cache", "out", "*.onnx", "*.db",
)


def _source_files(pattern: str) -> dict[str, Path]:
    """wheel path -> source file, for every file matching ``pattern`` under the package folders."""
    found: dict[str, Path] = {}
    for folder, target in PACKAGE_DIRS.items():
        for f in (ROOT / folder).rglob(pattern):
            rel = f.relative_to(ROOT / folder)
            if "__pycache__" in rel.parts or (folder == "sdk" and rel.parts[0] in PACKAGE_DIRS):
                continue
            if pattern == "*.py" and not (f.parent / "__init__.py").exists():
                continue  # not inside a package (scripts such as protos/generate.py are not shipped)
            found[f"{target}/{rel.as_posix()}"] = f
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    # --skip-dependency-check: setuptools ≥ 70.1 builds wheels itself; the `wheel` package is not needed.
    # build from a copy so the shared tree's build/ (the editable link tree) and egg-info stay untouched
    shutil.copytree(ROOT, src, ignore=IGNORE)
    res = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check", "--outdir", str(tmp / "dist"), str(src)],
        capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    wheels = list((tmp / "dist").glob("devicefit-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


@pytest.mark.slow
def test_wheel_contains_every_module_and_data_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing_py = sorted(set(_source_files("*.py")) - names)
    assert not missing_py, f"modules missing from the wheel (add the package to pyproject.toml): {missing_py}"
    for must in ("devicefit/__init__.py", "devicefit/agent/__init__.py", "devicefit/compressor/__init__.py",
                 "devicefit/device_profiles/loader.py", "devicefit/py.typed"):
        assert must in names
    boards = {n for n in names if n.startswith("devicefit/device_profiles/boards/") and n.endswith(".toml")}
    assert len(boards) >= 10
    assert boards == {n for n in _source_files("*.toml") if "/boards/" in n}, "every board TOML ships"
    protos = set(_source_files("*.proto"))
    assert protos <= names, f"missing .proto files: {sorted(protos - names)}"
    for proto in protos:  # each .proto ships with its generated stubs
        stem = proto[: -len(".proto")]
        assert f"{stem}_pb2.py" in names, f"no generated stub for {proto}"


@pytest.mark.slow
def test_installed_wheel_imports_and_lists_profiles(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target", str(target),
         str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(target), "DEVICEFIT_CONFIG_DIR": str(tmp_path / "cfg")}
    env.pop("DEVICEFIT_PROFILE_PATH", None)
    code = (
        "import json, devicefit, devicefit.device_profiles as dp\n"
        "ps = dp.list_profiles(include_localhost=False)\n"
        "print(json.dumps({'file': devicefit.__file__, 'boards': dp.BUILTIN_DIR.as_posix(),"
        " 'ids': [p.id for p in ps], 'pi5': dp.load_profile('raspberry-pi-5').cpu.cores}))\n"
    )
    # -S: no site-packages at all, so only the wheel (and the standard library) can answer the imports
    res = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout)
    assert r["file"].startswith(str(target)) and r["boards"].startswith(target.as_posix())
    assert len(r["ids"]) >= 10 and r["pi5"] == 4
    # with site-packages (numpy, onnxruntime…) the wheel's agent package imports too, still from the wheel
    code = "import devicefit.agent.sysinfo as s; print(s.__file__); print(s.probe_system()['cores_logical'])"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    path, cores = res.stdout.split()
    assert path.startswith(str(target)) and int(cores) >= 1
