"""ASGI middleware: request logging with a request id, the request body limit, and the guard
against cross-site writes and DNS rebinding."""

from __future__ import annotations

import ipaddress
import json
import time
import uuid
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("api.request")


class RequestLogMiddleware:
    """One log line per request: request_id, method, path, status, ms.

    Every response carries X-Request-Id and Server-Timing (`app;dur=<ms>`, the time from
    here to the response's start); with `expose_clock`, also X-App-Clock (see Settings).
    """

    def __init__(self, app: ASGIApp, *, expose_clock: bool = False) -> None:
        self.app = app
        self.expose_clock = expose_clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:12]
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Time in the app up to the response: lets a client tell the app's share of
                # the latency from the network's (benchmarks use it).
                ms = (time.perf_counter() - started) * 1000
                headers = message.setdefault("headers", [])
                headers.append((b"x-request-id", request_id.encode()))
                headers.append((b"server-timing", f"app;dur={ms:.3f}".encode()))
                if self.expose_clock:
                    headers.append((b"x-app-clock", f"{started:.6f}".encode()))
            await send(message)

        # Routes bind more (writer=, rows=, batch_id=) for this request's one log line.
        token = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 2),
            )
            structlog.contextvars.reset_contextvars(**token)


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 for request bodies over the limit, declared or streamed, before they are parsed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body: dict[str, Any] = {
            "error": "request_too_large",
            "message": f"request body over {self.max_bytes} bytes: send fewer items per request",
        }
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _loopback_name(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _split_authority(authority: str) -> str:
    """The host name of `host[:port]` (brackets of an IPv6 literal removed), lower-cased."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1 : authority.find("]")] if "]" in authority else ""
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


class BrowserGuardMiddleware:
    """Keeps web pages the developer happens to open from driving the app.

    Two attacks reach an app on a developer's machine from a browser:

    - **Cross-site writes.** A page on any site can POST to `http://127.0.0.1:8000` with a
      "simple" content type (`text/plain`, a form) that needs no CORS preflight. So every
      state-changing request (POST, PUT, PATCH, DELETE) with a body must say
      `Content-Type: application/json`, which a page can send cross-site only after a
      preflight this app never approves (415 otherwise); and in local mode a request that
      carries an `Origin` (browsers always send one on such requests) must come from the
      app's own origin (403 otherwise), which covers body-less ones such as `/cancel`.
    - **DNS rebinding.** A page on `evil.example` whose name then resolves to 127.0.0.1 is
      same-origin with the app as far as the browser knows, and could read `/debug/*`. Its
      requests carry `Host: evil.example`: in local mode only loopback names (`localhost`,
      127.0.0.0/8, `::1`) are served, on every route and WebSocket (421 otherwise).

    In databricks mode the app is reached only through the Databricks Apps proxy, which
    authenticates every request and sets the Host itself; the Host and Origin checks are
    left to it (docs/deploy.md), the content-type rule holds in both modes.
    """

    def __init__(self, app: ASGIApp, *, local: bool) -> None:
        self.app = app
        self.local = local

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, error, message = refusal
        log.warning(
            "request_refused",
            error=error,
            method=scope.get("method", "WEBSOCKET"),
            path=scope["path"],
            host=headers.get("host", "")[:100],
            origin=headers.get("origin", "")[:100],
        )
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        await _send_json(send, status, {"error": error, "message": message})

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str, str] | None:
        host = headers.get("host", "")
        if self.local and not _loopback_name(_split_authority(host)):
            return (
                421,
                "invalid_host",
                f"Host {host[:100]!r} is not served: the local app answers only to loopback "
                "names (localhost, 127.0.0.1, [::1])",
            )
        unsafe = scope["type"] == "websocket" or scope.get("method") in _UNSAFE_METHODS
        if not unsafe:
            return None
        if scope["type"] == "http":
            content_type = headers.get("content-type")
            media = (content_type or "").split(";", 1)[0].strip().lower()
            has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
            if media != "application/json" and (content_type is not None or has_body):
                return (
                    415,
                    "unsupported_media_type",
                    f"{scope['method']} {scope['path']} takes Content-Type: application/json, "
                    f"got {(content_type or 'none')[:100]!r}",
                )
        origin = headers.get("origin")
        if self.local and origin is not None:
            own = {f"http://{host}".lower(), f"https://{host}".lower()}
            if origin.lower() not in own:
                return (
                    403,
                    "cross_origin_request",
                    f"a request from origin {origin[:100]!r} cannot change this app; "
                    "use its own page or a client that sends no Origin",
                )
        return None


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
