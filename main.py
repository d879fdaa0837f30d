"""The FastAPI app: `create_app(settings)`, and `app` for `uvicorn main:app`."""

from __future__ import annotations

import gc
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from api import api_router
from api.middleware import BodyLimitMiddleware, BrowserGuardMiddleware, RequestLogMiddleware
from api.models import ProcessRequest
from dwbench.assets import STATIC_DIR
from dwbench.errors import DirectWriteError
from dwbench.log import configure_logging
from dwbench.runtime import Runtime
from dwbench.settings import Settings
from writers.base import WriterSettings


def create_app(
    settings: Settings | None = None,
    *,
    writer_settings: Mapping[str, WriterSettings] | None = None,
    process_app: bool = False,
) -> FastAPI:
    """The app. `writer_settings` are writers' settings by writer name, instead of read from
    the environment. `process_app` is for the entry point, the one app of its process: it
    sets up log output on start-up, and freezes what start-up built out of the collector's
    reach.
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if process_app:
            configure_logging()
        runtime = Runtime(settings, writer_settings)
        app.state.runtime = runtime
        try:
            await runtime.start()
            if process_app:
                # Start-up leaves ~160,000 long-lived objects (modules, schemas, the SDK)
                # that every full collection would walk again, on the event loop, while
                # requests wait: gc.collect() then gc.freeze() moves them out of its way.
                gc.collect()
                gc.freeze()
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="Direct Write Bench",
        version="0.1.0",
        description="Write the same records through Zerobus, a SQL warehouse and Lakebase, "
        "and compare latency and throughput.",
        lifespan=lifespan,
        # Served below from the vendored Swagger UI, not FastAPI's CDN default, so that
        # /docs works without internet; ReDoc is not vendored.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.include_router(api_router)
    _declare_request_models(app, ProcessRequest)

    @app.exception_handler(DirectWriteError)
    async def direct_write_error(_: Request, exc: DirectWriteError) -> JSONResponse:
        body = {
            "error": exc.error,
            "message": exc.message,
            "writer": exc.writer,
        }
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's shape, with the offending input made safe to echo: NaN is not JSON, and a
        # 16 MiB description does not belong in an error message.
        errors = [{**e, "input": _echo(e.get("input"))} for e in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

        @app.get("/", include_in_schema=False)
        async def index() -> FileResponse:
            return FileResponse(STATIC_DIR / "index.html")

        @app.get("/docs", include_in_schema=False)
        async def docs(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "").rstrip("/")
            return get_swagger_ui_html(
                openapi_url=f"{root}{app.openapi_url}",
                title=f"{app.title} - Swagger UI",
                swagger_js_url=f"{root}{_SWAGGER_UI}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{_SWAGGER_UI}/swagger-ui.css",
                swagger_favicon_url=f"{root}{_SWAGGER_UI}/favicon-32x32.png",
            )

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(BrowserGuardMiddleware, local=settings.is_local)
    app.add_middleware(RequestLogMiddleware, expose_clock=settings.expose_app_clock)
    return app


_SWAGGER_UI = "/static/vendor/swagger-ui"  # swagger-ui-dist, see its README.md there


def _declare_request_models(app: FastAPI, *models: type[BaseModel]) -> None:
    """Put request bodies that routes parse themselves into the OpenAPI components."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            if model.__name__ not in components:
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _echo(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):  # a raw body that is not JSON, maybe not UTF-8
        return bytes(value[:200]).decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str) and len(value) > 200:
        return value[:200] + f"… ({len(value)} characters)"
    if isinstance(value, dict | list):
        text = repr(value)
        return value if len(text) <= 2000 and "nan" not in text else text[:200] + "…"
    return value


# For `uvicorn main:app`: settings from the environment, logging set up when it starts.
app = create_app(process_app=True)
