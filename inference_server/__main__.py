"""``python -m inference_server [--host H] [--port P] [--weights DIR] [--device D]``: run uvicorn.

Options override the ``SEGMENT_*`` environment variables (see :class:`Settings`)."""

from __future__ import annotations

import argparse

import uvicorn

from inference_server.app import create_app
from inference_server.connections import protocol_with
from inference_server.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="inference_server", description="Serve the segmentation over HTTP.")
    parser.add_argument("--host", help="address to bind (default: SEGMENT_HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--weights", help="folder with coarse.pt and fine.pt (default: $SEGCORE_WEIGHTS, else the shipped model)"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    overrides = {"weights_dir": args.weights, "device": args.device, "host": args.host}
    settings = Settings(**{key: value for key, value in overrides.items() if value is not None})
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=args.port,
        log_level=args.log_level,
        http=protocol_with(settings.head_timeout_s, settings.max_connections),  # places, deadlines
        timeout_keep_alive=settings.idle_timeout_s,
    )


if __name__ == "__main__":
    main()
