"""Authentication of the agent's gRPC endpoint: TLS / mutual TLS credentials and per-device bearer tokens.

A client sends ``authorization: Bearer <token>`` metadata; :class:`TokenInterceptor` refuses any other call with
UNAUTHENTICATED before a handler runs (the standard health service stays open, so probes need no secret).
Tokens are compared in constant time. Without TLS the token crosses the network in clear: use both.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from devicefit.errors import UserInputError

#: calls that need no token (liveness / readiness probes)
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


def read_tokens(path: str | Path) -> list[str]:
    """Tokens from a file, one per line (blank lines and ``#`` comments ignored)."""
    try:
        lines = Path(path).expanduser().read_text().splitlines()
    except OSError as exc:
        raise UserInputError(f"token file {str(path)!r} is unreadable: {exc}", "pass a file with one token per line") from exc
    tokens = [t.strip() for t in lines if t.strip() and not t.strip().startswith("#")]
    if not tokens or any(len(t) < 16 for t in tokens):
        raise UserInputError(f"token file {str(path)!r} has no token of >= 16 characters",
                             "write one per line, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return tokens


def _deny(code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, details)

    return grpc.unary_unary_rpc_method_handler(abort)


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses calls without a valid ``authorization: Bearer <token>`` (UNAUTHENTICATED)."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    def _valid(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        given = token.strip().encode()
        ok = False
        for t in self._tokens:  # no early exit: the time taken does not tell which token nearly matched
            ok |= hmac.compare_digest(given, t)
        return scheme.lower() == "bearer" and ok

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        if details.method in OPEN_METHODS:
            return continuation(details)
        header = next((str(v) for k, v in details.invocation_metadata or () if k == "authorization"), "")
        if not header:
            return _deny(grpc.StatusCode.UNAUTHENTICATED, "this agent needs a bearer token (authorization metadata)")
        if not self._valid(header):
            return _deny(grpc.StatusCode.UNAUTHENTICATED, "the bearer token is not valid for this agent")
        return continuation(details)


def server_credentials(cert: str | Path, key: str | Path, client_ca: str | Path | None = None) -> grpc.ServerCredentials:
    """TLS credentials of the agent; with ``client_ca`` clients must present a certificate it signed (mTLS)."""
    try:
        pair = (Path(key).expanduser().read_bytes(), Path(cert).expanduser().read_bytes())
        ca = Path(client_ca).expanduser().read_bytes() if client_ca else None
    except OSError as exc:
        raise UserInputError(f"TLS file unreadable: {exc}", "pass --tls-cert, --tls-key (and --client-ca) files") from exc
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def is_loopback(host: str) -> bool:
    """Whether a listen host is a loopback address (or ``localhost``)."""
    h = host.strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, tls: bool, insecure_bind_all: bool) -> None:
    """Refuse to listen in plaintext on anything but loopback unless explicitly asked to."""
    if not tls and not insecure_bind_all and not is_loopback(host):
        raise UserInputError(
            f"refusing to serve plaintext, unauthenticated gRPC on {host} (reachable from the network)",
            "pass --tls-cert/--tls-key (and --client-ca / --token-file), or --insecure-bind-all on a trusted network",
        )
