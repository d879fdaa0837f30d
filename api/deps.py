"""Dependencies shared by the routes, as Annotated aliases.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread pool,
and two thread hops per request queue every request behind whatever else the loop holds.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from dwbench.runtime import Runtime
from dwbench.settings import Settings


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
