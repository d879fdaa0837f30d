"""The local stack's OAuth M2M route `/oidc/v1/token`, and what the tokens it issues may do."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulator.oauth import OAuthIssuer, TokenRejected
from tests.conftest import run_sql
from tests.emulator.test_rest_route import body_of, insert_url
from tests.emulator.zerobus_support import product, read_rows
from writers.zerobus_oauth import authorization_details


def token_url(endpoints: dict[str, Any]) -> str:
    return f"{endpoints['api_url']}/oidc/v1/token"


def resource(endpoints: dict[str, Any]) -> str:
    return f"api://databricks/workspaces/{endpoints['workspace_id']}/zerobusDirectWriteApi"


def grant(
    endpoints: dict[str, Any],
    *,
    secret: str | None = None,
    details: Any = None,
    **form: str,
) -> httpx.Response:
    data = {"grant_type": "client_credentials", "scope": "all-apis", **form}
    if details is not None:
        data["authorization_details"] = details if isinstance(details, str) else json.dumps(details)
    return httpx.post(
        token_url(endpoints),
        data=data,
        auth=(endpoints["oauth_client_id"], secret or endpoints["oauth_client_secret"]),
        timeout=30,
    )


def insert(endpoints: dict[str, Any], table: str, token: str, rows: list[dict[str, Any]]):
    return httpx.post(
        insert_url(endpoints, table),
        content=body_of(rows),
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


@pytest.fixture
def two_tables(local_stack) -> tuple[str, str]:
    from tests.conftest import products_ddl

    names = tuple(f"main.default.oidc_{k}_{secrets.token_hex(3)}" for k in "ab")
    for name in names:
        run_sql(local_stack, products_ddl(name))
    return names  # type: ignore[return-value]


def test_the_client_is_published_and_stable(local_stack):
    assert local_stack["oauth_client_id"].startswith("local-")
    assert len(local_stack["oauth_client_secret"]) >= 40
    # Derived from the stack's token: a stack restarted with it keeps its client.
    again = OAuthIssuer(local_stack["token"])
    assert (again.client_id, again.client_secret) == (
        local_stack["oauth_client_id"],
        local_stack["oauth_client_secret"],
    )
    assert local_stack["oauth_client_secret"] != local_stack["token"]


def test_a_scoped_grant_writes_into_its_table(local_stack, two_tables):
    table_a, _ = two_tables
    resp = grant(
        local_stack, details=authorization_details(table_a), resource=resource(local_stack)
    )
    assert resp.status_code == 200
    answer = resp.json()
    assert set(answer) == {"access_token", "token_type", "expires_in", "scope"}
    assert (answer["token_type"], answer["expires_in"], answer["scope"]) == (
        "Bearer",
        3600,
        "all-apis",
    )
    assert resp.headers["cache-control"] == "no-store"
    rows = [product(i, prefix="oauth") for i in range(3)]
    ok = insert(local_stack, table_a, answer["access_token"], rows)
    assert (ok.status_code, ok.json()) == (200, {})
    assert read_rows(local_stack, table_a) == rows


def test_a_token_for_table_a_is_refused_for_table_b(local_stack, two_tables):
    table_a, table_b = two_tables
    token = grant(local_stack, details=authorization_details(table_a)).json()["access_token"]
    resp = insert(local_stack, table_b, token, [product(1)])
    assert resp.status_code == 403
    assert resp.json() == {
        "error_code": "PERMISSION_DENIED",
        "message": f"the OAuth token does not grant writes on {table_b}",
    }
    assert read_rows(local_stack, table_b) == []


def test_an_unscoped_token_is_refused_by_zerobus(local_stack, two_tables):
    table_a, _ = two_tables
    token = grant(local_stack).json()["access_token"]
    resp = insert(local_stack, table_a, token, [product(1)])
    assert resp.status_code == 403
    assert resp.json() == {
        "error_code": "PERMISSION_DENIED",
        "message": "the OAuth token has no authorization_details; Zerobus needs a token "
        f"scoped to {table_a}",
    }


def test_a_wrong_secret_is_invalid_client(local_stack):
    resp = grant(local_stack, secret="not-the-secret")
    assert resp.status_code == 401
    assert resp.json() == {
        "error": "invalid_client",
        "error_description": "invalid client id or secret",
    }
    assert resp.headers["www-authenticate"] == "Basic"
    unknown = httpx.post(
        token_url(local_stack),
        data={"grant_type": "client_credentials", "scope": "all-apis"},
        auth=("someone-else", local_stack["oauth_client_secret"]),
    )
    assert unknown.status_code == 401 and unknown.json()["error"] == "invalid_client"
    anonymous = httpx.post(
        token_url(local_stack), data={"grant_type": "client_credentials", "scope": "all-apis"}
    )
    assert anonymous.status_code == 401
    assert anonymous.json() == {
        "error": "invalid_client",
        "error_description": "client authentication (Basic) is required",
    }


def _without_schema(table: str) -> list[dict[str, Any]]:
    return [d for d in authorization_details(table) if d["object_type"] != "SCHEMA"]


def _table_entry(table: str, **change: Any) -> list[dict[str, Any]]:
    details = authorization_details(table)
    details[2] = {**details[2], **change}
    return details


T = "main.default.products"


@pytest.mark.parametrize(
    ("details", "description"),
    [
        (
            "[{",
            "authorization_details is not JSON: Expecting property name enclosed in double "
            "quotes: line 1 column 3 (char 2)",
        ),
        (
            {"type": "unity_catalog_privileges"},
            "authorization_details must be a non-empty JSON array",
        ),
        ([], "authorization_details must be a non-empty JSON array"),
        (["x"], "authorization_details[0] is not an object"),
        (
            _table_entry(T, type="other"),
            "authorization_details[2].type must be 'unity_catalog_privileges'",
        ),
        (
            _table_entry(T, object_type="VIEW"),
            "authorization_details[2].object_type must be CATALOG, SCHEMA or TABLE",
        ),
        (
            _table_entry(T, object_full_path="main.products"),
            "authorization_details[2].object_full_path must name a table in 3 part(s)",
        ),
        (
            _table_entry(T, privileges=["SELECT"]),
            "authorization_details[2] lacks MODIFY on main.default.products",
        ),
        (
            _table_entry(T, privileges="SELECT,MODIFY"),
            "authorization_details[2].privileges must be an array of strings",
        ),
        (
            _table_entry(T, operations=["read"]),
            "authorization_details[2].operations must be a TABLE's array with zerobuswrite",
        ),
        (
            _without_schema(T),
            "USE SCHEMA on main.default is needed for main.default.products",
        ),
        (authorization_details(T)[:2], "authorization_details grants no TABLE"),
    ],
    ids=[
        "not-json",
        "object",
        "empty",
        "not-an-object",
        "type",
        "object-type",
        "path",
        "privileges-missing",
        "privileges-shape",
        "operations",
        "no-use-schema",
        "no-table",
    ],
)
def test_malformed_authorization_details_are_invalid_requests(local_stack, details, description):
    resp = grant(local_stack, details=details)
    assert resp.status_code == 400
    assert resp.json() == {"error": "invalid_request", "error_description": description}


@pytest.mark.parametrize(
    ("form", "answer"),
    [
        (
            {"grant_type": "password"},
            {
                "error": "unsupported_grant_type",
                "error_description": "grant_type must be client_credentials",
            },
        ),
        (
            {"scope": "sql"},
            {"error": "invalid_scope", "error_description": "scope must be all-apis"},
        ),
        (
            {"resource": "api://databricks/workspaces/42/zerobusDirectWriteApi"},
            {
                "error": "invalid_request",
                # The workspace id is the first label of the Zerobus host: 127.0.0.1 here.
                "error_description": "resource must be "
                "api://databricks/workspaces/127/zerobusDirectWriteApi",
            },
        ),
    ],
    ids=["grant-type", "scope", "resource"],
)
def test_other_bad_grants(local_stack, form, answer):
    resp = grant(local_stack, **form)
    assert (resp.status_code, resp.json()) == (400, answer)


def test_a_json_body_is_refused(local_stack):
    resp = httpx.post(
        token_url(local_stack),
        json={"grant_type": "client_credentials"},
        auth=(local_stack["oauth_client_id"], local_stack["oauth_client_secret"]),
    )
    assert resp.status_code == 400
    assert resp.json() == {
        "error": "invalid_request",
        "error_description": "the body must be application/x-www-form-urlencoded",
    }


def test_tokens_expire():
    now = {"t": 1000.0}
    issuer = OAuthIssuer("stack-token", lifetime_s=600, clock=lambda: now["t"])
    basic = httpx.BasicAuth(issuer.client_id, issuer.client_secret)._auth_header
    form = {
        "grant_type": "client_credentials",
        "scope": "all-apis",
        "authorization_details": json.dumps(authorization_details(T)),
    }
    token = issuer.issue(basic, form)["access_token"]
    now["t"] += 599.0
    issuer.authorize_write(f"Bearer {token}", T)  # still valid
    now["t"] += 1.0
    with pytest.raises(TokenRejected) as rejected:
        issuer.authorize_write(f"Bearer {token}", T)
    assert (rejected.value.status, rejected.value.message) == (401, "the OAuth token has expired")
    with pytest.raises(TokenRejected) as again:
        issuer.authorize_write(f"Bearer {token}", T)
    assert (again.value.status, again.value.message) == (401, "invalid or missing bearer token")
    issuer.authorize_write("Bearer stack-token", T)  # the stack's own token never expires


def test_no_secret_or_token_is_logged(local_stack, two_tables):
    table_a, _ = two_tables
    token = grant(local_stack, details=authorization_details(table_a)).json()["access_token"]
    assert insert(local_stack, table_a, token, [product(7)]).status_code == 200
    grant(local_stack, secret="wrong-secret-xyz")
    log = Path(local_stack["data_dir"], "local-stack.log").read_text()
    assert "oauth_token_issued" in log and "oauth_client_rejected" in log  # it is the log
    for secret in (local_stack["oauth_client_secret"], token, "wrong-secret-xyz"):
        assert secret not in log


async def test_the_official_sdk_oauth_path_streams_over_grpc(local_stack, two_tables):
    """The Zerobus SDK mints its own table-scoped token at {workspace}/oidc/v1/token (resource
    from the Zerobus host's first label) and streams with it."""
    from zerobus.sdk.aio import ZerobusSdk
    from zerobus.sdk.shared import RecordType, StreamConfigurationOptions, TableProperties

    from tests.emulator.zerobus_support import to_json

    table_a, _ = two_tables
    sdk = ZerobusSdk(local_stack["zerobus_endpoint"], local_stack["api_url"])
    await sdk._inner.set_use_tls(False)
    stream = await sdk.create_stream(
        local_stack["oauth_client_id"],
        local_stack["oauth_client_secret"],
        TableProperties(table_a),
        StreamConfigurationOptions(record_type=RecordType.JSON),
    )
    rows = [product(i, prefix="sdk") for i in range(3)]
    offset = await stream.ingest_records_offset([to_json(r) for r in rows])
    await stream.wait_for_offset(offset)
    await stream.close()
    assert read_rows(local_stack, table_a) == rows


async def test_grpc_refuses_a_token_scoped_to_another_table(local_stack, two_tables):
    from zerobus.sdk.shared import NonRetriableException

    from tests.emulator.zerobus_support import async_stream

    table_a, table_b = two_tables
    token = grant(local_stack, details=authorization_details(table_a)).json()["access_token"]
    with pytest.raises(NonRetriableException) as refused:
        await async_stream(local_stack, table_b, token=token)
    assert "The caller does not have permission" in str(refused.value)
    assert f"the OAuth token does not grant writes on {table_b}" in str(refused.value)
    assert token not in str(refused.value)
    assert read_rows(local_stack, table_b) == []


# -- the workspace APIs: the SDK's oauth-m2m --------------------------------------------------


def test_the_oauth_metadata_names_the_token_endpoint(local_stack):
    meta = httpx.get(f"{local_stack['api_url']}/.well-known/databricks-config", timeout=30)
    assert meta.json() == {
        "oidc_endpoint": f"{local_stack['api_url']}/oidc",
        "workspace_id": local_stack["workspace_id"],
    }
    resp = httpx.get(
        f"{local_stack['api_url']}/oidc/.well-known/oauth-authorization-server", timeout=30
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["token_endpoint"] == token_url(local_stack)
    assert body["authorization_endpoint"] == f"{local_stack['api_url']}/oidc/v1/authorize"


def api_calls(endpoints: dict[str, Any], token: str) -> list[httpx.Response]:
    """One call each to the SQL, Unity Catalog and Files APIs with `token`."""
    headers = {"Authorization": f"Bearer {token}"}
    base = endpoints["api_url"]
    return [
        httpx.get(f"{base}/api/2.0/sql/warehouses/{endpoints['warehouse_id']}", headers=headers),
        httpx.get(f"{base}/api/2.1/unity-catalog/tables/main.default.nothing_here/exists",
                  headers=headers),
        httpx.head(f"{base}/api/2.0/fs/files/Volumes/main/default/none/f", headers=headers),
    ]  # fmt: skip


def test_an_unscoped_token_calls_the_workspace_apis(local_stack):
    token = grant(local_stack).json()["access_token"]
    sql, uc, files = api_calls(local_stack, token)
    assert sql.status_code == 200 and sql.json()["id"] == local_stack["warehouse_id"]
    assert uc.status_code == 200 and uc.json() == {"table_exists": False}
    assert files.status_code == 404  # past the token check: no such file


def test_a_table_scoped_or_unknown_token_is_refused_by_the_workspace_apis(local_stack, two_tables):
    table_a, _ = two_tables
    scoped = grant(local_stack, details=authorization_details(table_a)).json()["access_token"]
    for token in (scoped, "not-a-token"):
        for resp in api_calls(local_stack, token):
            assert resp.status_code == 401, resp.text
            if resp.request.method != "HEAD":
                assert resp.json() == {
                    "error_code": "UNAUTHENTICATED",
                    "message": "Invalid access token.",
                }


def test_the_sdk_signs_in_with_the_stack_client_and_runs_a_statement(local_stack):
    from databricks.sdk import WorkspaceClient

    w = WorkspaceClient(
        host=local_stack["api_url"],
        client_id=local_stack["oauth_client_id"],
        client_secret=local_stack["oauth_client_secret"],
        auth_type="oauth-m2m",
    )
    assert w.config.auth_type == "oauth-m2m"
    answer = w.statement_execution.execute_statement(
        "SELECT 41 + 1", warehouse_id=local_stack["warehouse_id"], wait_timeout="30s"
    )
    assert answer.result is not None and answer.result.data_array == [["42"]]
