from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.deps import RuntimeDep
from api.models import ModeInfo, WriterInfo, WriterStatus
from bench.environment import capture_environment, mode_notice
from dwbench.runtime import Runtime
from workloads.products import CATEGORIES, sample_items
from writers import WRITERS, ingest_writers, writer_metadata

router = APIRouter(tags=["writers"])


async def writer_info(runtime: Runtime, name: str) -> WriterInfo:
    """A writer's availability now, within the runtime's availability timeout. `status` is
    available, unavailable, or (local mode) restarting / down when the local stack or its
    Postgres is being restarted or failed to restart; `reason` then says why."""
    meta = writer_metadata(name)
    common = {k: meta[k] for k in ("name", "label", "family", "color", "stores_rows")}
    common["stand_in"] = runtime.targets.mode == "local" and bool(meta["stores_rows"])
    stack = runtime.local_stack_status()
    if stack is not None and meta["stores_rows"] and stack["state"] in ("restarting", "down"):
        # Every stand-in lives in the stack: no need to ask a writer that cannot answer.
        return WriterInfo(
            **common,
            available=False,
            status=stack["state"],
            reason=stack["reason"] or f"the local stack is {stack['state']}",
            details={"local_stack": stack},
        )
    if meta["family"] == "lakebase" and stack is not None:
        # The stand-in's Postgres is the stack's: the stack knows when it restarts it.
        postgres = await _postgres_health(runtime)
        state = postgres.get("state") if postgres is not None else None
        if postgres is not None and (state == "restarting" or state == "down"):
            return WriterInfo(
                **common,
                available=False,
                status=state,
                reason=postgres.get("reason") or f"Postgres is {state}",
                details={"local_stack": stack, "postgres": postgres},
            )
    availability = await runtime.writer_availability(name)
    details = dict(availability.details)
    status: WriterStatus = "available" if availability.available else "unavailable"
    reason = availability.reason
    if not availability.available:
        reason = reason or "unavailable, and the writer gave no reason"
    if stack is not None:
        details.setdefault("local_stack", stack)
    return WriterInfo(
        **common, available=availability.available, status=status, reason=reason, details=details
    )


async def _postgres_health(runtime: Runtime) -> dict[str, Any] | None:
    """What the local stack says of its Postgres (None: it does not say)."""
    services = await runtime.stack_services()
    postgres = services.get("postgres") if services else None
    return postgres if isinstance(postgres, dict) else None


@router.get("/api/v1/writers")
async def list_writers(
    runtime: RuntimeDep, baseline: Annotated[bool, Query()] = False
) -> list[WriterInfo]:
    """The writers that store rows (the ingestion API's choices; with baseline=true also the
    harness baseline), with metadata and their availability now."""
    names = list(WRITERS) if baseline else ingest_writers()
    return list(await asyncio.gather(*(writer_info(runtime, n) for n in names)))


@router.get("/api/v1/mode")
async def get_mode(runtime: RuntimeDep) -> ModeInfo:
    """Local (the local stack's stand-ins on this machine) or databricks, and what that means."""
    environment = capture_environment(runtime.targets)
    return ModeInfo(mode=runtime.targets.mode, notice=mode_notice(environment))


@router.get("/api/v1/categories")
async def get_categories() -> list[str]:
    """The known product categories (any other text up to 64 characters is accepted too)."""
    return list(CATEGORIES)


@router.get("/api/v1/sample-items")
async def get_sample_items(
    count: Annotated[int, Query(ge=1, le=1000)] = 5,
    seed: Annotated[int, Query(ge=0)] = 0,
) -> list[dict[str, Any]]:
    """Deterministic sample products to fill the form."""
    return [item.model_dump(mode="json") for item in sample_items(count, seed=seed)]
