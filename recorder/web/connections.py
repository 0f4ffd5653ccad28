"""The console's HTTP connections, bounded: uvicorn's HTTP/1.1 with what it lacks
against a client that connects and never finishes asking.

uvicorn times a connection out only once a response has gone and the connection is
quiet; one that sends nothing, or half a request, it keeps for ever, and it accepts
as many as come. Each holds a file descriptor of the process, and in `recorder run`
that is the service's: a few hundred idle sockets would leave the link, the proxy and
the database without one. Here a connection has REQUEST_TIMEOUT seconds to finish
each request's head, and at most MAX_CONNECTIONS are open; more are closed at once.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

# Seconds a connection may take to send a whole request head (uvicorn's keep-alive).
REQUEST_TIMEOUT = 5.0
# Connections open at once, at most: browsers open six to a host, live streams are
# eight at most (recorder.web.live).
MAX_CONNECTIONS = 64


class Guarded(H11Protocol):
    """One connection: closed when no request is being answered and none came whole
    within REQUEST_TIMEOUT, or at once past MAX_CONNECTIONS."""

    _asking: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        if len(self.connections) > MAX_CONNECTIONS:
            transport.close()
            return
        self._wait()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._wait()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._asking is not None:
            self._asking.cancel()
        super().connection_lost(exc)

    def _wait(self) -> None:
        """From now, the next request's head has REQUEST_TIMEOUT seconds."""
        if self._asking is not None:
            self._asking.cancel()
        self._asking = self.loop.call_later(REQUEST_TIMEOUT, self._too_slow)

    def _too_slow(self) -> None:
        self._asking = None
        answering = self.cycle is not None and not self.cycle.response_complete
        if answering or self.transport.is_closing():
            return  # a request came whole: the next one's time starts when it is answered
        if self.conn.our_state not in (h11.ERROR, h11.CLOSED):
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()
