"""A throw-away PostgreSQL server for the shared-study tests: Debian's ``postgresql`` binaries, a fresh cluster
in a temporary folder, listening on a free 127.0.0.1 port only, stopped by PID (fast shutdown) at the end.

PostgreSQL refuses to run as root; as root (CI) the server runs as the ``postgres`` user the package creates."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

INSTALL = "apt-get install postgresql (as root: bash .ci/install-system-deps.sh) and pip install psycopg2-binary"


def _pg_bin() -> Path | None:
    """The folder holding ``initdb`` and ``postgres`` (on PATH, else Debian's /usr/lib/postgresql/N/bin)."""
    found = shutil.which("initdb")
    if found and (Path(found).resolve().parent / "postgres").exists():
        return Path(found).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
    return Path(dirs[-1]) if dirs and (Path(dirs[-1]) / "initdb").exists() else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """``postgresql+psycopg2://devicefit@127.0.0.1:PORT/devicefit`` of a server started for this module."""
    pg_bin = _pg_bin()
    if pg_bin is None:
        pytest.skip(f"PostgreSQL is not installed: {INSTALL}")
    try:
        import psycopg2
    except ImportError:
        pytest.skip(f"psycopg2 is not installed: {INSTALL}")
    as_root = os.geteuid() == 0
    user = {"user": "postgres", "group": "postgres", "extra_groups": []} if as_root else {}
    data = Path(tempfile.mkdtemp(prefix="devicefit-pg-"))  # not under pytest's 0700 root-owned tmp
    if as_root:
        shutil.chown(data, "postgres", "postgres")
    subprocess.run([str(pg_bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "devicefit", "-E", "UTF8",
                    "--no-sync", "--no-instructions"], check=True, capture_output=True, timeout=120, **user)
    port = _free_port()
    log = open(data.parent / f"{data.name}.log", "wb")  # noqa: SIM115 - closed after the server stops
    proc = subprocess.Popen([str(pg_bin / "postgres"), "-D", str(data), "-p", str(port), "-k", str(data),
                             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                             "-c", "full_page_writes=off"], stdout=log, stderr=subprocess.STDOUT, **user)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=port, user="devicefit", dbname="postgres")
                break
            except psycopg2.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start (exit {proc.poll()}): "
                                       f"{Path(log.name).read_text(errors='replace')[-2000:]}") from None
                time.sleep(0.2)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE devicefit")
        conn.close()
        yield f"postgresql+psycopg2://devicefit@127.0.0.1:{port}/devicefit"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown: roll back open transactions, exit
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()
        shutil.rmtree(data, ignore_errors=True)
        Path(log.name).unlink(missing_ok=True)
