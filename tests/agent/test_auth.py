"""Authenticated gRPC: TLS, mutual TLS, bearer tokens; plaintext only on loopback unless asked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from devicefit.agent.auth import check_bind, server_credentials
from devicefit.agent.server import AgentServer, make_service
from devicefit.cli import main
from devicefit.errors import DeviceError, UserInputError
from devicefit.transport.grpc_transport import GrpcTransport

pytestmark = pytest.mark.timeout(120)
TOKEN = "t0ken-for-device-a-0123456789"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    assert main(["certs", "init", "--dir", str(d), "--device", "dev-a"]) == 0
    assert (d / "ca.key").stat().st_mode & 0o077 == 0
    return d


@pytest.fixture(scope="module")
def server(certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentServer]:
    svc = make_service(tmp_path_factory.mktemp("store"), device_id="dev-a")
    creds = server_credentials(certs / "dev-a.pem", certs / "dev-a.key", certs / "ca.pem")
    srv = AgentServer(svc, "127.0.0.1:0", credentials=creds, tokens=[TOKEN])
    yield srv
    srv.stop(grace=0.5)


def _connect(srv: AgentServer, certs: Path, **kw: object) -> GrpcTransport:
    args: dict[str, object] = {"tls_ca": str(certs / "ca.pem"), "tls_cert": str(certs / "host.pem"),
                               "tls_key": str(certs / "host.key"), "token": TOKEN, "connect_timeout": 3.0}
    args.update(kw)
    return GrpcTransport(srv.url, **args)  # type: ignore[arg-type]


def test_mtls_and_token_let_the_host_in(server: AgentServer, certs: Path) -> None:
    assert server.url.startswith("grpcs://127.0.0.1:")
    t = _connect(server, certs)
    try:
        assert t.info()["device_id"] == "dev-a" and t.list_models()["models"] == []
    finally:
        t.close()


def test_a_client_without_the_token_is_refused(server: AgentServer, certs: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVICEFIT_TOKEN", raising=False)
    for token in (None, "wrong-token-0123456789abcdef"):
        t = _connect(server, certs, token=token)
        try:
            with pytest.raises(DeviceError, match="UNAUTHENTICATED"):
                t.list_models()
            assert t.health() == "SERVING"  # probes need no secret
        finally:
            t.close()


def test_a_client_without_a_certificate_is_refused(server: AgentServer, certs: Path) -> None:
    with pytest.raises(DeviceError, match="unreachable"):  # the TLS handshake fails: no channel
        _connect(server, certs, tls_cert=None, tls_key=None, connect_timeout=2.0)
    plain = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    with pytest.raises(grpc.FutureTimeoutError):
        grpc.channel_ready_future(plain).result(timeout=2.0)
    plain.close()


def test_plaintext_binds_loopback_only_unless_asked() -> None:
    check_bind("127.0.0.1", tls=False, insecure_bind_all=False)
    check_bind("[::1]", tls=False, insecure_bind_all=False)
    check_bind("0.0.0.0", tls=True, insecure_bind_all=False)
    check_bind("0.0.0.0", tls=False, insecure_bind_all=True)
    with pytest.raises(UserInputError, match="plaintext"):
        check_bind("0.0.0.0", tls=False, insecure_bind_all=False)
    from devicefit.agent.serve_args import DEFAULT_GRPC

    assert DEFAULT_GRPC.startswith("127.0.0.1:")
