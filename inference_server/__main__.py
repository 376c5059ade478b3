"""``python -m inference_server [--host H] [--port P] [--weights DIR] [--device D]``: run uvicorn.

Options override the ``SEGMENT_*`` environment variables (see :class:`Settings`)."""

from __future__ import annotations

import argparse

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from inference_server.app import create_app
from inference_server.settings import Settings


class IdleClosingH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, except that a connection that never sends a byte is closed
    after the keep-alive timeout (uvicorn starts that timer only after a first response)."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)


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
        http=IdleClosingH11Protocol,
        timeout_keep_alive=settings.idle_timeout_s,
        limit_concurrency=settings.max_connections,
    )


if __name__ == "__main__":
    main()
