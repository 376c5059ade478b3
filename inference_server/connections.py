"""Connections: every phase has a deadline, and no slow client can hold a place a request needs.

:class:`ConnectionPolicy` is uvicorn's HTTP/1.1 protocol (``h11``) with what it lacks:

* a connection that never sends a byte is closed after the keep-alive timeout (uvicorn starts
  that timer only after a first response), and a request head must be complete within
  ``head_timeout`` of its first byte (uvicorn cancels its timer at the first byte and restarts
  it only after a response, so a client sending one byte held its connection for good);
* at most ``max_connections`` connections hold a place. uvicorn's own limit (``limit_concurrency``)
  counted every open connection and answered 503 to every request beyond it, so 64 connections
  that sent one byte each, reopened as they were closed, kept ``/health`` and ``/segment`` at
  503 for as long as the attack went on. Here a connection that needs a place takes it from the
  connection that has waited longest for its next request, once that one has waited
  ``EVICTABLE_AFTER_S`` (an honest client sends its head within milliseconds of connecting, or
  of its previous answer); such connections cost nothing to close, whatever they had sent.
  When none has waited that long, the newcomer gets one of ``HEALTH_PLACES`` places kept for
  ``GET /health`` (any other request there: 503 and close); beyond those it is answered 503 and
  closed at once. A newcomer is itself not evictable for ``EVICTABLE_AFTER_S``, so an attacker
  that reconnects as fast as it is closed evicts each of its older connections once, then lands
  on the health places: no endless churn of places.

The places are counted over the connections of one server process (uvicorn's shared state).
"""

from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEALTH_PATH = "/health"
EVICTABLE_AFTER_S = 1.0
"""How long a connection must have waited for its next request before a newcomer may take its place."""
HEALTH_PLACES = 4
"""Connections beyond ``max_connections`` that may only ask for ``GET /health``."""
BUSY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 19\r\n"
    b"connection: close\r\nretry-after: 1\r\n\r\nService Unavailable"
)


class HealthOnly:
    """ASGI app for a connection on a health place: ``/health`` as usual, anything else 503 and close."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == HEALTH_PATH:
            return await self.app(scope, receive, send)
        await send(
            {"type": "http.response.start", "status": 503,
             "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"19"),
                         (b"connection", b"close"), (b"retry-after", b"1")]}
        )  # fmt: skip
        await send({"type": "http.response.body", "body": b"Service Unavailable"})


class ConnectionPolicy(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with the deadlines and the places of the module docstring.

    Subclassed with the settings as class attributes (``head_timeout``, ``max_connections``) by
    :func:`protocol_with`; uvicorn's ``limit_concurrency`` must stay unset.
    """

    head_timeout: float = 10.0
    max_connections: int = 64

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.head_deadline = None
        self.waiting_since = self.loop.time()
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        self._take_a_place()

    def _take_a_place(self) -> None:
        others = [c for c in self.connections if c is not self and not c.transport.is_closing()]
        if len(others) < self.max_connections:
            return
        now = self.loop.time()
        waited = [c for c in others if c.waiting_for_request() and now - c.waiting_since >= EVICTABLE_AFTER_S]
        if waited:
            oldest = min(waited, key=lambda c: c.waiting_since)
            oldest.transport.close()
        elif len(others) < self.max_connections + HEALTH_PLACES:
            self.app = HealthOnly(self.app)
        else:
            self.transport.write(BUSY_ANSWER)
            self.transport.close()

    def waiting_for_request(self) -> bool:
        """No request of this connection is being answered: it waits for (the rest of) a head."""
        return (self.cycle is None or self.cycle.response_complete) and self.conn.their_state in (h11.IDLE, h11.DONE)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        waiting_for_head = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting_for_head and self.head_deadline is None:
            self.head_deadline = self.loop.call_later(self.head_timeout, self._head_timed_out)
        elif not waiting_for_head and self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def on_response_complete(self) -> None:
        self.waiting_since = self.loop.time()
        super().on_response_complete()

    def connection_lost(self, exc) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
        super().connection_lost(exc)

    def _head_timed_out(self) -> None:
        self.head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def protocol_with(head_timeout: float, max_connections: int) -> type[ConnectionPolicy]:
    """:class:`ConnectionPolicy` with these settings, for ``uvicorn.run(http=...)``."""
    return type("Protocol", (ConnectionPolicy,), {"head_timeout": head_timeout, "max_connections": max_connections})
