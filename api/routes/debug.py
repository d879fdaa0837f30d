from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import APIRouter
from pydantic import BaseModel

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


# The local stack answers its status at once when it is up; a stopped one is said so fast.
_STACK_STATUS_TIMEOUT_S = 3.0


class StackStatus(BaseModel):
    mode: str
    available: bool
    reason: str
    # Torn Delta log tails the stack recovered at its start (see emulator/recovery.py).
    incidents: list[dict[str, Any]]
    status: dict[str, Any] | None


@router.get("/debug/stack")
async def debug_stack(runtime: RuntimeDep) -> StackStatus:
    """The local stack's status: tables, counters and the incidents recovered at start."""
    mode = runtime.targets.mode
    api_url, token = runtime.endpoints.get("api_url"), runtime.endpoints.get("token")
    if mode != "local" or not api_url or not token:
        reason = "no local stack: the app runs in databricks mode"
        return StackStatus(mode=mode, available=False, reason=reason, incidents=[], status=None)
    try:
        async with httpx.AsyncClient(timeout=_STACK_STATUS_TIMEOUT_S) as client:
            resp = await client.get(
                f"{api_url}/api/local/status", headers={"Authorization": f"Bearer {token}"}
            )
    except httpx.HTTPError as exc:
        reason = f"the local stack does not answer: {str(exc) or type(exc).__name__}"
        return StackStatus(mode=mode, available=False, reason=reason, incidents=[], status=None)
    if resp.status_code != 200:
        reason = f"the local stack answered {resp.status_code}"
        return StackStatus(mode=mode, available=False, reason=reason, incidents=[], status=None)
    status: dict[str, Any] = resp.json()
    return StackStatus(
        mode=mode,
        available=True,
        reason="",
        incidents=status.get("incidents", []),
        status=status,
    )
