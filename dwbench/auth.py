"""Workspace auth, resolved once through databricks-sdk's unified auth and handed to every
client that accepts it (the SQL writer, reading rows back, Unity Catalog, Lakebase).

Where the credentials come from, first match wins:

1. the settings: DATABRICKS_HOST with DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET
   (a service principal, OAuth M2M: what Databricks Apps sets), or with DATABRICKS_TOKEN
   (a personal access token);
2. a profile: `dwbench run --profile NAME` or DATABRICKS_CONFIG_PROFILE, from
   DATABRICKS_CONFIG_FILE or ~/.databrickscfg (any auth type the profile names);
3. whatever else unified auth finds for DATABRICKS_HOST (the token cache that
   `databricks auth login` fills, Azure CLI, ...), or the config file's default profile.

A profile named together with explicit credentials, or a token together with a service
principal, is refused: one identity writes, and the user says which. The result is the
SDK's `Config` and a description without secrets; failures are one-line
`WorkspaceAuthError`s naming what was tried.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dwbench.errors import WriterUnavailableError
from dwbench.settings import Settings

_DEFAULT_CONFIG_FILE = "~/.databrickscfg"
_SETTINGS_SECTION = "__settings__"  # the CLI's own section, not a profile
# How the SDK says that no credentials strategy applied.
_NO_DEFAULT_CREDENTIALS = "cannot configure default credentials"
_NO_DISCOVERY = "Invalid URL 'None'"  # OAuth without a discovery URL
_SENSITIVE_KEYS = frozenset({"token", "client_secret", "password", "azure_client_secret"})


class WorkspaceAuthError(WriterUnavailableError):
    """No usable workspace credentials; the message says what was tried, never a secret."""


@dataclass(frozen=True)
class WorkspaceAuth:
    """Resolved credentials: the SDK's Config and where they came from."""

    config: Any  # databricks.sdk.core.Config
    host: str
    auth_type: str  # the SDK's name: pat, oauth-m2m, databricks-cli, external-browser, ...
    profile: str | None
    source: str  # which settings or file, in words

    def describe(self) -> dict[str, Any]:
        """What results and logs record: no token, secret or client id."""
        return {
            "host": self.host,
            "auth_type": self.auth_type,
            "profile": self.profile,
            "source": self.source,
        }

    def summary(self) -> str:
        return f"{self.auth_type} ({self.source})"

    def who(self) -> str:
        """How a message names this identity: `profile 'dev'` or the settings used."""
        return f"profile {self.profile!r}" if self.profile else self.source

    def client_credentials(self) -> tuple[str, str] | None:
        """The service principal's OAuth client id and secret, for clients that take only
        those (Zerobus Ingest); None for any other auth type."""
        cfg = self.config
        if self.auth_type == "oauth-m2m" and cfg.client_id and cfg.client_secret:
            return str(cfg.client_id), str(cfg.client_secret)
        return None

    def workspace_client(self) -> Any:
        from databricks.sdk import WorkspaceClient

        return WorkspaceClient(config=self.config)


def config_file(settings: Settings) -> Path:
    """The config file unified auth reads profiles from."""
    return Path(settings.databricks_config_file or _DEFAULT_CONFIG_FILE).expanduser()


def profiles_in(path: Path) -> list[str] | None:
    """The profile names in a config file; None when there is no readable file."""
    parser = configparser.ConfigParser()
    try:
        if not parser.read(path):
            return None
    except configparser.Error:
        return None
    names = [name for name in parser.sections() if name != _SETTINGS_SECTION]
    if parser.defaults():
        names.insert(0, "DEFAULT")
    return names


def _profiles_text(path: Path) -> str:
    names = profiles_in(path)
    if names is None:
        return f"no config file at {path}"
    return f"profiles in {path}: {', '.join(names) if names else 'none'}"


def check_profile(settings: Settings) -> None:
    """Refuse a named profile that the config file does not have (cheap: no network)."""
    name = settings.databricks_config_profile
    if not name:
        return
    path = config_file(settings)
    names = profiles_in(path)
    if names is None:
        raise WorkspaceAuthError(
            f"Databricks profile {name!r} not found: there is no config file at {path} "
            "(set DATABRICKS_CONFIG_FILE, or run `databricks auth login --profile "
            f"{name}`)"
        )
    if name not in names:
        raise WorkspaceAuthError(f"Databricks profile {name!r} not found ({_profiles_text(path)})")


def _explicit_source(settings: Settings) -> str | None:
    if settings.databricks_client_id and settings.databricks_client_secret:
        return "DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET"
    if settings.databricks_token:
        return "DATABRICKS_TOKEN"
    return None


def resolve_workspace_auth(settings: Settings) -> WorkspaceAuth:
    """Resolve the workspace's credentials (may call the workspace: OAuth discovery, host
    metadata; run it in a thread)."""
    from databricks.sdk.core import Config

    profile = settings.databricks_config_profile
    explicit = _explicit_source(settings)
    path = config_file(settings)
    common: dict[str, Any] = {
        "config_file": str(path),
        # Each client made from the Config inherits this retry budget.
        "retry_timeout_seconds": settings.workspace_retry_timeout_s,
    }
    if explicit and explicit != "DATABRICKS_TOKEN" and settings.databricks_token:
        raise WorkspaceAuthError(
            f"both DATABRICKS_TOKEN and {explicit} are set: unset one, so that it is clear "
            "which identity writes"
        )
    if profile and explicit:
        raise WorkspaceAuthError(
            f"both Databricks profile {profile!r} and {explicit} are set: unset one, so that "
            "it is clear which identity writes"
        )
    kwargs: dict[str, Any]
    if explicit:
        if not settings.workspace_url:
            raise WorkspaceAuthError(f"{explicit} is set but DATABRICKS_HOST is not")
        if explicit == "DATABRICKS_TOKEN":
            assert settings.databricks_token is not None
            kwargs = {"token": settings.databricks_token.get_secret_value(), "auth_type": "pat"}
        else:
            assert settings.databricks_client_secret is not None
            kwargs = {
                "client_id": settings.databricks_client_id,
                "client_secret": settings.databricks_client_secret.get_secret_value(),
                "auth_type": "oauth-m2m",
            }
        source = explicit
        kwargs["host"] = settings.workspace_url
    elif profile:
        check_profile(settings)
        kwargs = {"profile": profile}
        if settings.workspace_url:
            kwargs["host"] = settings.workspace_url
        source = f"profile {profile!r} in {path}"
    else:
        kwargs = {"host": settings.workspace_url} if settings.workspace_url else {}
        source = "unified auth"
    try:
        cfg = Config(**common, **kwargs)
    except Exception as exc:  # the SDK raises ValueError; its network calls, others
        raise WorkspaceAuthError(_failure(settings, source, explicit, profile, path, exc)) from None
    if not cfg.host:
        raise WorkspaceAuthError(f"{source} names no workspace host: set DATABRICKS_HOST")
    if not explicit and not profile:
        # What unified auth found: a default profile, or the CLI's token cache, ...
        source = (
            f"profile {cfg.profile!r} in {path}"
            if cfg.profile
            else f"unified auth ({cfg.auth_type})"
        )
    return WorkspaceAuth(
        config=cfg,
        host=str(cfg.host),
        auth_type=str(cfg.auth_type),
        profile=cfg.profile or None,
        source=source,
    )


def _failure(
    settings: Settings,
    source: str,
    explicit: str | None,
    profile: str | None,
    path: Path,
    exc: Exception,
) -> str:
    reason = _sdk_reason(exc, _secrets(settings, path, profile))
    nothing_found = _NO_DEFAULT_CREDENTIALS in reason
    if explicit or profile:
        if nothing_found:
            reason = "it holds no credentials (token, client_id and client_secret, or auth_type)"
        elif _NO_DISCOVERY in reason:
            # OAuth endpoints come from the host's metadata, which did not answer.
            reason = (
                f"{reason.split(':', 1)[0]}: the workspace's OAuth endpoints could not be "
                "discovered (its /.well-known/databricks-config did not answer: is the host "
                "right and reachable?)"
            )
        return f"cannot authenticate to Databricks with {source}: {reason}"
    host = settings.workspace_url
    login = f"databricks auth login --host {host}" if host else "databricks auth login"
    first = "set DATABRICKS_TOKEN" if host else "set DATABRICKS_HOST and DATABRICKS_TOKEN"
    first += " (or a service principal's DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET)"
    return (
        f"no Databricks credentials{f' for {host}' if host else ''}: {first}, or pass "
        f"--profile ({_profiles_text(path)}), or run `{login}`"
        + ("" if nothing_found else f" ({reason})")
    )


def _secrets(settings: Settings, path: Path, profile: str | None) -> list[str]:
    """Every secret the attempt may have used: the settings' and the profile's."""
    found = [
        s.get_secret_value()
        for s in (settings.databricks_token, settings.databricks_client_secret)
        if s is not None
    ]
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
        section = parser[profile or "DEFAULT"]
    except (configparser.Error, KeyError):
        return [s for s in found if s]
    found += [v for k, v in section.items() if k in _SENSITIVE_KEYS]
    return [s for s in found if s]


def _sdk_reason(exc: Exception, secrets: list[str]) -> str:
    """The SDK's message on one line, without its config dump (which masks secrets, but a
    one-line message is no place for it) and with any secret masked all the same."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    for marker in (". Config: ", ". Env: "):
        text = text.split(marker, 1)[0]
    text = text.removeprefix("default auth: ")  # the SDK's name for trying every kind
    for secret in secrets:
        text = text.replace(secret, "***")
    return text.rstrip(".")


def auth_line(auth: WorkspaceAuth | None, problem: str | None) -> str:
    """One line for a run's header: who writes to which workspace, or why nobody can."""
    if auth is None:
        return f"workspace auth: none: {problem or 'not resolved'}"
    return f"workspace auth: {auth.summary()} on {auth.host}"
