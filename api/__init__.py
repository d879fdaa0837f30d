"""HTTP routes, one module per resource; `api_router` gathers them."""

from fastapi import APIRouter

from api.routes import benchmarks, debug, health, ingest, reports, sweeps, workloads, writers
from api.routes import pipeline as pipeline_routes

api_router = APIRouter()
api_router.include_router(ingest.router)
api_router.include_router(writers.router)
api_router.include_router(workloads.router)
api_router.include_router(debug.router)
api_router.include_router(health.router)
api_router.include_router(benchmarks.router)
api_router.include_router(reports.router)
api_router.include_router(sweeps.router)
api_router.include_router(pipeline_routes.router)
