"""uvicorn (requirements-serve.txt) serving an application on a socket bound here, in the foreground
(serve.py) or in a background thread on a free loopback port (tests, tools)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable

import uvicorn

from utils.errors import ConfigError
from utils.serve.service import ServiceSettings

LOOPBACK = "127.0.0.1"
# How long uvicorn waits, past the service's own grace period, for the 503s of the requests left over to go
# out before it cancels what still runs.
ANSWER_MARGIN_S = 2.0


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port); port 0 picks a free one. Raises ConfigError when it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Connections accepted from it inherit TCP_NODELAY: an answer's headers and body go out at once, not
    # the body 40 ms later when the client's delayed ACK of the headers comes back (Nagle's algorithm).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        reason = error.strerror or error
        raise ConfigError(
            f"cannot listen on {host} port {port} ({reason}); pick a free port or another address."
        ) from None
    return sock


def server_for(app, access_log: bool = False) -> uvicorn.Server:
    """uvicorn logging through this project's logging setup (log_config=None). For an app of create_app,
    the service's connection cap and graceful shutdown: when shutdown begins the service stops admitting
    requests, answers those in flight until its grace period ends and the ones left over with 503."""
    service = getattr(getattr(app, "state", None), "service", None)
    settings = service.settings if service is not None else ServiceSettings()
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=access_log,
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=settings.graceful_timeout_s + ANSWER_MARGIN_S,
    )
    return Server(config, service.begin_shutdown if service is not None else None)


class Server(uvicorn.Server):
    """uvicorn's server, calling ``on_shutdown()`` on the event loop as its shutdown begins."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.on_shutdown is not None:
            self.on_shutdown()
        await super().shutdown(sockets)


class BackgroundServer:
    """``with BackgroundServer(app) as server: ... server.url``: the app served on a free port of
    127.0.0.1 by a background thread, stopped (its lifespan ended) on leaving the block."""

    def __init__(self, app, timeout: float = 60.0) -> None:
        self.app, self.timeout = app, timeout

    def __enter__(self) -> BackgroundServer:
        sock = bind(LOOPBACK, 0)
        self.port = sock.getsockname()[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.server = server_for(self.app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server on {self.url} did not start; see the log above.")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(self.timeout)

    def __exit__(self, *exc_info) -> None:
        self.stop()
