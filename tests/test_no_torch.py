"""The device side imports without torch: ``import devicefit`` and every module of devicefit.agent,
devicefit.protos, devicefit.kernels and devicefit.device_profiles, in a process where torch (and the
compressor) cannot be imported at all."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

#: installs a meta-path finder that makes torch and devicefit.compressor unimportable, then walks packages
PRELUDE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys, traceback

    BLOCKED = ("torch", "torchvision", "torchaudio", "devicefit.compressor")

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ModuleNotFoundError(f"blocked by test_no_torch: {name}", name=name)
            return None

    sys.meta_path.insert(0, NoTorch())
    assert "torch" not in sys.modules

    def walk(packages):
        imported, failed = [], {}
        for pkg in packages:
            try:
                mod = importlib.import_module(pkg)
            except Exception:
                failed[pkg] = traceback.format_exc(limit=3)
                continue
            imported.append(pkg)
            for info in pkgutil.walk_packages(getattr(mod, "__path__", []), pkg + "."):
                try:
                    importlib.import_module(info.name)
                    imported.append(info.name)
                except Exception:
                    failed[info.name] = traceback.format_exc(limit=3)
        return imported, failed
    """
)


def run_without_torch(body: str) -> dict:
    code = PRELUDE + textwrap.dedent(body)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    result: dict = json.loads(res.stdout.strip().splitlines()[-1])
    return result


def test_blocker_really_blocks_torch() -> None:
    r = run_without_torch(
        """
        try:
            import torch
            ok = False
        except ImportError:
            ok = True
        print(json.dumps({"blocked": ok}))
        """
    )
    assert r["blocked"] is True


def test_device_side_packages_import_without_torch() -> None:
    r = run_without_torch(
        """
        import devicefit
        imported, failed = walk(["devicefit.agent", "devicefit.protos", "devicefit.kernels",
                                 "devicefit.device_profiles"])
        import devicefit.errors, devicefit.data  # the shared helpers the agent uses
        print(json.dumps({"imported": imported, "failed": failed,
                          "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
                          "compressor": "devicefit.compressor" in sys.modules}))
        """
    )
    assert not r["failed"], "modules that need torch or the compressor:\n" + "\n".join(
        f"{name}:\n{tb}" for name, tb in r["failed"].items()
    )
    assert r["torch"] == [] and r["compressor"] is False
    names = set(r["imported"])
    assert {"devicefit.agent", "devicefit.agent.sysinfo", "devicefit.agent.microbench",
            "devicefit.device_profiles.loader", "devicefit.device_profiles.schema"} <= names


def test_cli_parser_and_profiles_work_without_torch() -> None:
    """``devicefit --help`` builds every area's parser: none may import torch at top level."""
    r = run_without_torch(
        """
        from devicefit.cli import build_parser
        build_parser()
        from devicefit.device_profiles import list_profiles
        n = len(list_profiles(include_localhost=False))
        print(json.dumps({"boards": n, "torch": "torch" in sys.modules}))
        """
    )
    assert r["torch"] is False and r["boards"] >= 10
