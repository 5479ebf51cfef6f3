"""Client side of the agent's authentication: TLS / mTLS channel credentials and a bearer-token interceptor.

``GrpcTransport("grpcs://pi:50051", tls_ca=..., tls_cert=..., tls_key=..., token=...)``; each falls back to the
environment (``DEVICEFIT_TLS_CA``, ``DEVICEFIT_TLS_CERT``, ``DEVICEFIT_TLS_KEY``, ``DEVICEFIT_TOKEN``) so the CLI
needs no extra options.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from devicefit.errors import UserInputError


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                                   "wait_for_ready", "compression")),
               grpc.ClientCallDetails):
    pass


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(d.metadata or ()), self._header]
        return _Details(d.method, d.timeout, metadata, d.credentials, getattr(d, "wait_for_ready", None),
                        getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails,
                              request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails,
                               request_iterator: Any) -> Any:
        return continuation(self._with_token(details), request_iterator)


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise UserInputError(f"{what} {path!r} is unreadable: {exc}", "make the files with `devicefit certs init`") from exc


def open_channel(
    target: str, *, tls: bool, options: Sequence[tuple[str, Any]], token: str | None = None,
    tls_ca: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
    tls_server_name: str | None = None,
) -> grpc.Channel:
    """A channel to ``target``: TLS when ``tls`` (client certificate when given: mTLS), bearer token when given."""
    token = token or os.environ.get("DEVICEFIT_TOKEN") or None
    opts = list(options)
    if tls:
        ca = _read(tls_ca or os.environ.get("DEVICEFIT_TLS_CA"), "TLS CA certificate")
        cert = _read(tls_cert or os.environ.get("DEVICEFIT_TLS_CERT"), "TLS client certificate")
        key = _read(tls_key or os.environ.get("DEVICEFIT_TLS_KEY"), "TLS client key")
        if tls_server_name:
            opts.append(("grpc.ssl_target_name_override", tls_server_name))
        creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        channel = grpc.secure_channel(target, creds, options=opts)
    else:
        channel = grpc.insecure_channel(target, options=opts)
    return grpc.intercept_channel(channel, BearerToken(token)) if token else channel
