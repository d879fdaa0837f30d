from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.deps import RuntimeDep
from api.models import ModeInfo, WriterInfo
from bench.environment import capture_environment, mode_notice
from dwbench.errors import WriterUnavailableError
from dwbench.runtime import Runtime
from workloads.products import CATEGORIES, sample_items
from writers import WRITERS, ingest_writers, writer_metadata

router = APIRouter(tags=["writers"])


async def writer_info(runtime: Runtime, name: str) -> WriterInfo:
    meta = writer_metadata(name)
    common = {k: meta[k] for k in ("name", "label", "family", "color", "stores_rows")}
    common["stand_in"] = runtime.targets.mode == "local" and bool(meta["stores_rows"])
    try:
        writer = await runtime.writers.get(name)
    except WriterUnavailableError as exc:
        return WriterInfo(**common, available=False, reason=exc.message, details={})
    availability = await writer.availability()
    return WriterInfo(
        **common,
        available=availability.available,
        reason=availability.reason,
        details=availability.details,
    )


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
