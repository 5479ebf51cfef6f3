"""The embedded MQTT broker: amqtt (pure Python, MQTT 3.1.1) started in-process on a loopback port.

    with EmbeddedBroker() as broker:          # a free port on 127.0.0.1
        fleet = devicefit.Fleet(broker.url, fleet="lab")

Nothing to install beyond ``devicefit[host]``; for many devices or real deployments use any broker by URL
(Mosquitto, EMQX). The broker runs on its own thread with its own asyncio loop; ``stop()`` shuts it down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from types import TracebackType
from typing import Any

from devicefit.errors import DeviceError, UserInputError

log = logging.getLogger("devicefit.broker")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """An amqtt broker on ``host:port`` (port 0: a free one), running until :meth:`stop`."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 15.0) -> None:
        try:
            from amqtt.broker import Broker
        except ImportError as exc:  # pragma: no cover - amqtt is part of devicefit[host]
            raise UserInputError("the embedded broker needs amqtt", "pip install 'devicefit[host]'") from exc
        self.host, self.port = host, port or free_port(host)
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._loop = asyncio.new_event_loop()
        self._broker: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

        async def _start() -> None:
            self._broker = Broker(config, loop=self._loop)
            await self._broker.start()

        def _run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(_start())
            except BaseException as exc:  # reported by the constructor
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=_run, name="devicefit-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(start_timeout) or self._error is not None:
            raise DeviceError(f"the embedded broker did not start on {self.host}:{self.port}: {self._error}",
                              "pick a free port with --port, or use another broker by URL")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    def stop(self, timeout: float = 3.0) -> None:
        """Close the listener (the port is free at once), end every session, stop the loop. (amqtt's own
        shutdown can hang while clients are busy; after ``timeout`` the remaining tasks are cancelled.)"""
        if self._broker is None or not self._thread.is_alive():
            return

        async def _shutdown() -> None:
            for server in list(getattr(self._broker, "_servers", {}).values()):
                if getattr(server, "instance", None) is not None:
                    server.instance.close()
            try:
                await asyncio.wait_for(self._broker.shutdown(), timeout)
            except Exception as exc:  # still stop: the clients reconnect to the next broker
                log.warning("embedded broker shutdown did not finish: %r", exc)
            me = asyncio.current_task()
            for task in asyncio.all_tasks():
                if task is not me:
                    task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_shutdown(), self._loop).result(timeout + 5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
