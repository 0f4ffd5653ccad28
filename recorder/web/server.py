"""Serving the console: on its own (`recorder web`), or inside `recorder run`, from the
service's own event loop (:class:`Embedded`).

uvicorn serves it, with its access log off: a line per request would carry
``?token=``.
"""

from __future__ import annotations

import socket

import uvicorn

from recorder.config.sections import WebConfig
from recorder.web.app import create_app
from recorder.web.connections import Guarded

# Seconds a request still running at the stop is given to finish.
GRACE = 1


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one); OSError if not.
    Bound before serving, so that the address said is one that already accepts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def address(sock: socket.socket) -> str:
    """The console's URL on ``sock``."""
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if sock.family == socket.AF_INET6 else host}:{port}/"


def server(url: str, shown: str, token: str | None) -> uvicorn.Server:
    app = create_app(url, shown, token)
    # A page being read when the console stops (a live feed) is cut after a moment:
    # uvicorn would otherwise wait for the browser to leave.
    config = uvicorn.Config(
        app,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=GRACE,
        http=Guarded,  # a client that never finishes asking holds no socket for ever
    )
    return uvicorn.Server(config)


class Embedded:
    """The console inside `recorder run`: started and stopped with the service, on its
    loop. Only uvicorn's start and stop run, not its main loop, which would wake ten
    times a second to refresh a Date header (an idle service stays asleep), and not its
    ``serve()``, which would take the signals the service owns."""

    def __init__(self, url: str, shown: str, token: str | None, sock: socket.socket) -> None:
        self.sock = sock
        self._server = server(url, shown, token)

    @property
    def url(self) -> str:
        return address(self.sock)

    async def start(self) -> None:
        config = self._server.config
        config.load()
        self._server.lifespan = config.lifespan_class(config)
        await self._server.startup(sockets=[self.sock])

    async def stop(self) -> None:
        self._server.should_exit = True
        await self._server.shutdown(sockets=[self.sock])


async def embedded(url: str, web: WebConfig) -> Embedded | None:
    """The console of ``[web]`` over the service's database, listening; None (said in
    the log) when it cannot listen."""
    import structlog

    from recorder.addresses import split_listen
    from recorder.db.backend import display_database

    log = structlog.get_logger("recorder.service")
    try:
        sock = bind(*split_listen(web.listen))
    except OSError as exc:
        log.error("web console cannot listen", listen=web.listen, error=exc.strerror)
        return None
    console = Embedded(url, display_database(url), web.token, sock)
    await console.start()
    log.info("web console listening", url=console.url)
    return console
