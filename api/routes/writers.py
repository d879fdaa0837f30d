from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import RuntimeDep
from api.models import WriterInfo
from dwbench.errors import WriterUnavailableError
from dwbench.runtime import Runtime
from workloads.products import CATEGORIES, ProductItem, sample_items
from writers import INGEST_WRITERS, writer_class

router = APIRouter(tags=["writers"])


async def writer_info(runtime: Runtime, name: str) -> WriterInfo:
    label = name
    try:
        label = writer_class(name).label
        writer = await runtime.writers.get(name)
    except WriterUnavailableError as exc:
        return WriterInfo(name=name, label=label, available=False, reason=exc.message, details={})
    availability = await writer.availability()
    return WriterInfo(
        name=name,
        label=label,
        available=availability.available,
        reason=availability.reason,
        details=availability.details,
    )


@router.get("/api/v1/writers")
async def list_writers(runtime: RuntimeDep) -> list[WriterInfo]:
    """The writers the ingestion API accepts, with their availability now."""
    return list(await asyncio.gather(*(writer_info(runtime, n) for n in INGEST_WRITERS)))


@router.get("/api/v1/categories")
async def get_categories() -> list[str]:
    """The known product categories (any other text up to 64 characters is accepted too)."""
    return list(CATEGORIES)


@router.get("/api/v1/sample-items")
async def get_sample_items(
    count: Annotated[int, Query(ge=1, le=1000)] = 5,
    seed: Annotated[int, Query(ge=0)] = 0,
) -> list[ProductItem]:
    """Deterministic sample products to fill the form."""
    return sample_items(count, seed=seed)
