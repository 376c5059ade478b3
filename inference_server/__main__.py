"""``python -m inference_server [--host H] [--port P] [--weights DIR] [--device D]``: run uvicorn.

Options override the ``SEGMENT_*`` environment variables (see :class:`Settings`)."""

from __future__ import annotations

import argparse

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from inference_server.app import create_app
from inference_server.settings import Settings


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with two deadlines it lacks: a connection that never sends a
    byte is closed after the keep-alive timeout (uvicorn starts that timer only after a first
    response), and a request head must be complete within ``head_timeout`` of its first byte
    (uvicorn cancels its timer at the first byte and restarts it only after a response, so a
    client sending one byte held its connection for good)."""

    head_timeout: float = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.head_deadline = None
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        waiting_for_head = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting_for_head and self.head_deadline is None:
            self.head_deadline = self.loop.call_later(self.head_timeout, self._head_timed_out)
        elif not waiting_for_head and self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def connection_lost(self, exc) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
        super().connection_lost(exc)

    def _head_timed_out(self) -> None:
        self.head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="inference_server", description="Serve the segmentation over HTTP.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--weights", help="folder with coarse.pt and fine.pt (default: model_weights/)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    overrides = {"weights_dir": args.weights, "device": args.device}
    settings = Settings(**{key: value for key, value in overrides.items() if value is not None})
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        http=type("Protocol", (DeadlineH11Protocol,), {"head_timeout": settings.head_timeout_s}),
        timeout_keep_alive=settings.idle_timeout_s,
        limit_concurrency=settings.max_connections,
    )


if __name__ == "__main__":
    main()
