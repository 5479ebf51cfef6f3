"""Trusted artifacts: ed25519-signed manifests (`devicefit keys`), an agent with --trust, replay protection."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import devicefit
from devicefit.agent.launch import spawn_agent
from devicefit.agent.server import make_service
from devicefit.agent.service import AgentService
from devicefit.artifact import Artifact
from devicefit.cli import main
from devicefit.cli.keys import init_keys
from devicefit.errors import DeviceError
from devicefit.protos import errors as E
from devicefit.protos import wire
from devicefit.protos.devicefit.v1 import agent_pb2, artifact_pb2
from devicefit.protos.manifest import Manifest
from devicefit.protos.schema import stamp

from .conftest import signed_artifact

pytestmark = pytest.mark.timeout(180)


def _upload(svc: AgentService, path: Path, m: Manifest, *, activate: bool = True) -> artifact_pb2.UploadResult:
    data = path.read_bytes()
    first = artifact_pb2.UploadChunk(upload_id=m.sha256, manifest=wire.manifest_to_proto(m), activate=activate,
                                     data=data)
    return svc.upload([stamp(first)])


def _artifact(tmp: Path, model: Path, name: str, key: Path, version: str) -> Artifact:
    return signed_artifact(tmp, model, key, version=version, name=name, model_id="tiny")  # type: ignore[no-any-return]


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return init_keys(tmp_path / "keys")


def test_a_bogus_signature_is_refused_by_an_agent_that_trusts_a_key(tmp_path: Path, tiny_onnx: Path,
                                                                     keys: tuple[Path, Path]) -> None:
    svc = make_service(tmp_path / "store", device_id="d", trust=[keys[1]])
    m = Manifest.for_file(tiny_onnx)
    for bogus in (m, m.with_(signature=b"\x01" * 64, signature_key_id="0" * 16)):
        res = _upload(svc, tiny_onnx, bogus)
        assert res.status.code == E.SIGNATURE_INVALID, res.status
    art = _artifact(tmp_path, tiny_onnx, "a", keys[0], "1")
    tampered = art.manifest.with_(metrics={"accuracy": 0.99})  # a claim changed after signing
    assert _upload(svc, tiny_onnx, tampered).status.code == E.SIGNATURE_INVALID
    other_priv, _ = init_keys(tmp_path / "other")
    foreign = _artifact(tmp_path, tiny_onnx, "b", other_priv, "1")
    assert _upload(svc, tiny_onnx, foreign.manifest).status.code == E.SIGNATURE_INVALID
    assert svc.store.entries() == [] and list(svc.store.uploads_dir.iterdir()) == []
    ok = _upload(svc, tiny_onnx, art.manifest)
    assert ok.status.ok and ok.activated


def test_an_older_version_replayed_is_refused_unless_rolling_back(tmp_path: Path, tiny_onnx: Path,
                                                                  tiny_onnx_b: Path, keys: tuple[Path, Path]) -> None:
    svc = make_service(tmp_path / "store", device_id="d", trust=[keys[1]])
    v1 = _artifact(tmp_path, tiny_onnx, "v1", keys[0], "1")
    v2 = _artifact(tmp_path, tiny_onnx_b, "v2", keys[0], "2")
    assert _upload(svc, v1.path, v1.manifest).activated
    assert _upload(svc, v2.path, v2.manifest).activated
    replay = _upload(svc, v1.path, v1.manifest)
    assert replay.status.code == E.REPLAYED and "older" in replay.status.message
    op = svc.activate(stamp(agent_pb2.ActivateRequest(model_id=v1.manifest.sha256)))
    assert op.status.code == E.REPLAYED
    assert svc.store.active_sha == v2.manifest.sha256 and svc.loaded is not None
    back = svc.rollback(stamp(agent_pb2.RollbackRequest()))
    assert back.status.ok and back.active_sha256 == v1.manifest.sha256


def test_keys_cli_and_a_live_agent_with_trust(tmp_path: Path, tiny_onnx: Path, tiny_onnx_b: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "init", "--dir", str(tmp_path / "k")]) == 0
    priv, pub = tmp_path / "k" / "fleet.key", tmp_path / "k" / "fleet.pub"
    assert priv.stat().st_mode & 0o077 == 0
    d = tmp_path / "art"
    d.mkdir()
    shutil.copy(tiny_onnx, d / "m.onnx")
    Artifact.from_file(d / "m.onnx").save()
    assert main(["keys", "sign", str(d), "--key", str(priv), "--version", "3"]) == 0
    signed = Artifact.load(d)
    assert signed.manifest.version == "3" and len(signed.manifest.signature) == 64
    with spawn_agent(tmp_path / "store", device_id="trusting", extra_args=("--trust", str(pub))) as agent, \
            devicefit.connect(agent.url) as dev:
        with pytest.raises(DeviceError, match="unsigned"):
            dev.deploy(tiny_onnx_b, progress=False)
        assert dev.deploy(signed, progress=False).active
        assert dev.transport.health() == "SERVING"  # type: ignore[attr-defined]
        assert dev.info()["active_model_id"] == "m"


def test_cli_deploy_of_a_signed_artifact_directory(tmp_path: Path, tiny_onnx: Path, keys: tuple[Path, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    art = _artifact(tmp_path, tiny_onnx, "a", keys[0], "2")
    with spawn_agent(tmp_path / "store", device_id="t", extra_args=("--trust", str(keys[1]))) as agent:
        assert main(["deploy", str(art.path.parent), "--to", agent.url, "--json"]) == 0
        assert '"active": true' in capsys.readouterr().out.replace('"active":true', '"active": true')
