"""Property-based requests from the app's own OpenAPI: no input, valid or not, gets a 5xx."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings

from dwbench.settings import Settings
from main import create_app

# The OpenAPI document does not depend on where the app runs, so it is built here; the
# requests go to the running app of the session.
OPENAPI = create_app(Settings(app_mode="local")).openapi()
# A valid benchmark, sweep or pipeline request starts a real run, sized by whatever the generator
# picked, in the background of the session; those routes' bad input is covered by
# tests/api/test_benchmarks.py and tests/api/test_sweeps.py instead.
schema = (
    schemathesis.openapi.from_dict(OPENAPI)
    .exclude(path="/api/v1/benchmarks", method="POST")
    .exclude(path="/api/v1/sweeps", method="POST")
    .exclude(path="/api/v1/pipeline/runs", method="POST")  # tests/pipeline/ covers it
)


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_server_error_for_any_input(case, app_server):
    response = case.call(base_url=app_server.url, timeout=60)
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
    )
