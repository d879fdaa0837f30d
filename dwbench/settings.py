"""The app's settings: one pydantic-settings class, built once at start and passed down.

These are the workspace-level settings every writer shares (mode, local stack, workspace
and its service principal) and the app's own. Each writer declares its own settings next
to it (`writers.zerobus.ZerobusSettings`, `writers.sql.SqlSettings`,
`writers.lakebase.LakebaseSettings`), read from the same environment variables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    # `local` runs against the local stack; `databricks` against a workspace.
    # Default: databricks when DATABRICKS_HOST or a profile (DATABRICKS_CONFIG_PROFILE) is
    # set, else local.
    app_mode: Literal["local", "databricks"] | None = None
    data_dir: Path = Path(".data")
    # An already running local stack (its api_url) instead of starting one, and its token.
    local_stack_url: str | None = None
    local_stack_token: SecretStr | None = None

    # Workspace auth (dwbench.auth resolves it with databricks-sdk's unified auth): a
    # service principal (what Databricks Apps sets), a personal access token, or a profile
    # of the config file (default ~/.databrickscfg).
    databricks_host: str | None = None
    databricks_client_id: str | None = None
    databricks_client_secret: SecretStr | None = None
    databricks_token: SecretStr | None = None
    databricks_config_profile: str | None = None
    databricks_config_file: Path | None = None
    # How long a workspace call (OAuth discovery, a client's requests) retries before it
    # fails; databricks-sdk's own default is 5 minutes.
    workspace_retry_timeout_s: int = Field(default=20, ge=1)

    # Request limits of POST /api/v1/process-structured.
    max_items_per_request: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Benchmarks only: each response carries X-App-Clock, the monotonic time (s) the app
    # started on the request, so a load generator on the same machine can tell the time a
    # request waited before the app's clock started from the time the app spent on it.
    expose_app_clock: bool = False
    # What a benchmark may hold in memory at once (bench.config.in_flight_memory: the
    # batches in flight as Arrow and as the writers' encoded copies); a run or sweep that
    # would hold more is refused with 422 before it starts.
    benchmark_memory_budget_mib: int = Field(default=512, ge=1)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, validation_alias="DATABRICKS_APP_PORT")

    @model_validator(mode="after")
    def _default_mode(self) -> Settings:
        if self.app_mode is None:
            workspace = self.databricks_host or self.databricks_config_profile
            self.app_mode = "databricks" if workspace else "local"
        return self

    @property
    def is_local(self) -> bool:
        return self.app_mode == "local"

    @property
    def workspace_url(self) -> str | None:
        if not self.databricks_host:
            return None
        host = self.databricks_host.rstrip("/")
        return host if host.startswith(("https://", "http://")) else f"https://{host}"
