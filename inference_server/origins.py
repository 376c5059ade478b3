"""Who may address the service: a Host allow-list, and no cross-origin POST unless configured.

:class:`HostGuard` (ASGI middleware, before admission) answers 400 to a request whose ``Host``
header names no allowed host, whatever its path: a page on ``evil.example`` whose name an
attacker points at 127.0.0.1 (DNS rebinding) reaches the service's socket, but says
``Host: evil.example``. The allowed hosts are ``allowed_hosts`` (``*``: any) or, by default, the
bound address, ``localhost``, ``127.0.0.1`` and ``::1``; the port is not compared.

A request that changes something (any method but GET, HEAD and OPTIONS: ``POST /segment``) and
carries an ``Origin`` header (browsers send one with every such request) is answered 403 unless
that origin is the service's own (its host and port are those of the ``Host`` header) or one
of ``allowed_origins`` (``*``: any). A request without ``Origin`` is not a browser's
cross-site request (``curl``, scripts) and passes. Both refusals close the connection, before a
byte of the body is read.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi.responses import JSONResponse

from inference_server.settings import Settings

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
ANY = "*"


def host_name(authority: str) -> str:
    """``host`` of ``host[:port]`` or ``[v6]:port``, lower case, without a trailing dot."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        name = authority[1 : authority.find("]")] if "]" in authority else authority[1:]
    else:
        name = authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority
    return name.rstrip(".")


def allowed_host_names(settings: Settings) -> set[str]:
    """The ``Host`` names answered (``{"*"}``: any)."""
    configured = settings.allowed_hosts or [settings.host, *LOCAL_NAMES]
    return {ANY} if ANY in configured else {host_name(name) for name in configured}


class HostGuard:
    """ASGI middleware: the ``Host`` allow-list and the ``Origin`` check of the module docstring."""

    def __init__(self, app, settings: Settings):
        self.app = app
        self.hosts = allowed_host_names(settings)
        self.origins = {origin.rstrip("/").lower() for origin in settings.allowed_origins}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        refusal = self._refusal(scope["method"], host, headers.get(b"origin"))
        if refusal is None:
            return await self.app(scope, receive, send)
        status, detail = refusal
        return await JSONResponse({"detail": detail}, status, {"Connection": "close"})(scope, receive, send)

    def _refusal(self, method: str, host: str, origin: bytes | None) -> tuple[int, str] | None:
        if ANY not in self.hosts and host_name(host) not in self.hosts:
            return 400, "the Host header names no host this service answers to (SEGMENT_ALLOWED_HOSTS)"
        if method in SAFE_METHODS or origin is None or ANY in self.origins:
            return None
        text = origin.decode("latin-1").strip().rstrip("/").lower()
        parts = urlsplit(text) if text != "null" else None
        if text in self.origins or (parts is not None and parts.scheme in ("http", "https")
                                    and parts.netloc == host.strip().lower()):  # fmt: skip
            return None
        shown = text[:100] if text.isascii() and text.isprintable() else "an origin"
        return 403, (
            f"cross-origin {method} from {shown} refused: only the service's own page, or an origin in "
            "SEGMENT_ALLOWED_ORIGINS, may send it"
        )
