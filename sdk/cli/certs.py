"""CLI: ``devicefit certs init`` — a small CA, a server certificate per device and a client certificate for the
host, for trying TLS / mutual TLS (``devicefit agent serve --tls-cert … --tls-key … --client-ca ca.pem``).

For production, use your own PKI; these are ECDSA P-256 certificates valid for ``--days`` (default 365).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devicefit.cli import emit


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    certs = subparsers.add_parser("certs", parents=[common], help="TLS material for trying it out: init")
    sub = certs.add_subparsers(dest="certs_command", metavar="COMMAND", parser_class=type(certs))
    init = sub.add_parser("init", parents=[common], help="make a CA, device server certificates and a host client certificate")
    init.add_argument("--dir", default="~/.devicefit/certs", help="output directory (default ~/.devicefit/certs)")
    init.add_argument("--device", action="append", default=[], metavar="NAME",
                      help="device host name (repeat); each gets NAME.pem / NAME.key valid for NAME, localhost, 127.0.0.1")
    init.add_argument("--client", default="host", help="client certificate name (default host)")
    init.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    init.set_defaults(func=_init)
    certs.set_defaults(func=lambda args: (certs.print_help(), 2)[1])


def _key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _write_cert(path: Path, cert: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _issue(name: str, key: Any, issuer_name: Any, issuer_key: Any, days: int, *, ca: bool = False,
           sans: Sequence[str] = (), client: bool = False) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name or subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        alt: list[x509.GeneralName] = []
        for s in sans:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(s)))
            except ValueError:
                alt.append(x509.DNSName(s))
        if alt:
            b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


def init_certs(directory: str | Path, devices: Sequence[str] = ("device",), client: str = "host",
               days: int = 365) -> dict[str, str]:
    """Write ca.pem/ca.key, DEVICE.pem/DEVICE.key per device and CLIENT.pem/CLIENT.key; returns the paths."""
    d = Path(directory).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_cert = _issue("devicefit test CA", ca_key, None, None, days, ca=True)
    _write_key(d / "ca.key", ca_key)
    _write_cert(d / "ca.pem", ca_cert)
    out = {"ca": str(d / "ca.pem")}
    for name in devices or ("device",):
        k = _key()
        _write_key(d / f"{name}.key", k)
        _write_cert(d / f"{name}.pem", _issue(name, k, ca_cert.subject, ca_key, days,
                                               sans=[name, "localhost", "127.0.0.1", "::1"]))
        out[name] = str(d / f"{name}.pem")
    k = _key()
    _write_key(d / f"{client}.key", k)
    _write_cert(d / f"{client}.pem", _issue(client, k, ca_cert.subject, ca_key, days, client=True))
    out["client"] = str(d / f"{client}.pem")
    return out


def _init(args: argparse.Namespace) -> int:
    out = init_certs(args.dir, args.device, args.client, args.days)
    emit(args, out, lambda o: "\n".join(f"{k}: {v}" for k, v in o.items()))
    return 0
