from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from api.deps import RuntimeDep
from api.models import WriterInfo, ZerobusAvailability
from api.routes.writers import writer_info
from writers import WRITERS

router = APIRouter(tags=["debug"])


@router.get("/debug/zerobus-availability")
async def zerobus_availability(runtime: RuntimeDep) -> ZerobusAvailability:
    """Whether the Zerobus writer can write now, and why not (secrets masked)."""
    info = await writer_info(runtime, "zerobus")
    return ZerobusAvailability.model_validate(
        {
            "zerobus_writer_available": info.available,
            "reason": info.reason,
            "mode": runtime.targets.mode,
            **info.details,
        }
    )


@router.get("/debug/writers")
async def debug_writers(runtime: RuntimeDep) -> dict[str, Any]:
    """Availability and configuration of every writer (secrets masked)."""
    infos: list[WriterInfo] = list(
        await asyncio.gather(*(writer_info(runtime, name) for name in WRITERS))
    )
    return {"mode": runtime.targets.mode, "writers": [i.model_dump() for i in infos]}
