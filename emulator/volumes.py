"""Unity Catalog Volumes and the Files API: what `databricks-sdk`'s `w.files` calls.

    PUT    /api/2.0/fs/files/Volumes/<catalog>/<schema>/<volume>/<path>[?overwrite=true|false]
           body: the file's bytes (application/octet-stream); one request per file
    POST   /api/2.0/fs/files/Volumes/...?action=initiate-upload
           multipart uploads (the SDK's way for files of 50 MiB and more): not served here
    GET    /api/2.0/fs/files/Volumes/...            the file's bytes
    DELETE /api/2.0/fs/files/Volumes/...            no body on success
    HEAD   /api/2.0/fs/files/Volumes/...            content-length, last-modified

A file `/Volumes/c/s/v/dir/f.parquet` is stored at `<data_dir>/volumes/c/s/v/dir/f.parquet`.
Volumes exist implicitly, as catalogs and schemas do on the local stack; their three names
are case-insensitive (stored lower-case), the path inside them is not. A path outside
`/Volumes/<catalog>/<schema>/<volume>/`, or with an empty, `.` or `..` segment, is refused
before the disk is touched. Uploads land in a temporary file renamed into place, so a
reader (COPY INTO) never sees half a file. Errors are `{"error_code", "message"}`.
"""

from __future__ import annotations

import asyncio
import email.utils
import hmac
import os
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse

from emulator.oauth import OAuthIssuer

log = structlog.get_logger(__name__)

MiB = 1024 * 1024
# The Files API takes single-request uploads of up to 5 GiB; the local stack keeps less on
# its disk per file.
DEFAULT_MAX_FILE_BYTES = 1024 * MiB
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


class FilesApiError(Exception):
    """A Files API request refused with an HTTP status and a Databricks error code."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


def invalid(message: str) -> FilesApiError:
    return FilesApiError(400, "INVALID_PARAMETER_VALUE", message)


class Volumes:
    """The files of every volume, under one directory."""

    def __init__(self, data_dir: Path, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        self.root = (data_dir / "volumes").resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_file_bytes = max_file_bytes

    def local_path(self, volume_path: str) -> Path:
        """Where `/Volumes/c/s/v/...` lives on disk; FilesApiError for any other path."""
        if "\x00" in volume_path or "\\" in volume_path:
            raise invalid(f"The path {volume_path!r} contains a NUL or backslash character.")
        parts = volume_path.split("/")
        if len(parts) < 2 or parts[0] != "" or parts[1] != "Volumes":
            raise invalid(
                f"The path {volume_path!r} is not in a volume: the local stack's Files API "
                "serves /Volumes/<catalog>/<schema>/<volume>/<path> only."
            )
        inside = parts[2:]
        if len(inside) < 3 or not all(_NAME.match(p) for p in inside[:3]):
            raise invalid(
                f"The path {volume_path!r} does not name a volume: expected "
                "/Volumes/<catalog>/<schema>/<volume>/... with names of letters, digits, "
                "'_' and '-'."
            )
        rest = inside[3:]
        if any(p in ("", ".", "..") for p in rest):
            raise invalid(
                f"The path {volume_path!r} has an empty, '.' or '..' segment; give the "
                "file's absolute path inside the volume."
            )
        path = self.root.joinpath(*(p.lower() for p in inside[:3]), *rest)
        # Belt and braces: whatever the segments were, the result stays under the root.
        if not path.resolve().is_relative_to(self.root):
            raise invalid(f"The path {volume_path!r} leaves the volume.")
        return path

    def file_path(self, volume_path: str) -> Path:
        """A file's path (not the volume itself)."""
        path = self.local_path(volume_path)
        if len(path.relative_to(self.root).parts) < 4:
            raise invalid(
                f"The path {volume_path!r} is a volume, not a file inside one: add the file's name."
            )
        return path

    def list_files(self, volume_path: str) -> list[tuple[str, Path]]:
        """The files at a path: the file itself, or the visible files of a directory (sorted,
        recursively; names starting with '_' or '.' are skipped, as Spark's readers do)."""
        path = self.local_path(volume_path)
        if path.is_file():
            return [(volume_path, path)]
        if not path.is_dir():
            return []
        base = volume_path.rstrip("/")
        found = []
        for child in sorted(path.rglob("*")):
            relative = child.relative_to(path)
            if not child.is_file() or any(p[0] in "_." for p in relative.parts):
                continue
            found.append((f"{base}/{relative.as_posix()}", child))
        return found

    async def write(self, volume_path: str, request: Request, *, overwrite: bool) -> int:
        path = self.file_path(volume_path)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_file_bytes:
            raise self._too_large(int(declared))
        if path.is_dir():
            raise FilesApiError(
                409, "RESOURCE_ALREADY_EXISTS", f"{volume_path} is a directory, not a file."
            )
        if path.exists() and not overwrite:
            raise FilesApiError(
                409,
                "ALREADY_EXISTS",
                f"The file {volume_path} already exists; upload with overwrite=true to replace it.",
            )
        for parent in path.relative_to(self.root).parents:
            if (self.root / parent).is_file():
                raise FilesApiError(
                    409,
                    "RESOURCE_ALREADY_EXISTS",
                    f"Cannot create {volume_path}: {self._volume_path(self.root / parent)} "
                    "is a file, not a directory.",
                )
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
        size, pending = 0, bytearray()
        out = await asyncio.to_thread(open, partial, "wb")
        try:
            with out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > self.max_file_bytes:
                        raise self._too_large(size)
                    pending += chunk
                    if len(pending) >= 4 * MiB:  # to disk in a thread, a few MiB at a time
                        await asyncio.to_thread(out.write, bytes(pending))
                        pending.clear()
                await asyncio.to_thread(out.write, bytes(pending))
            await asyncio.to_thread(os.replace, partial, path)
        finally:
            if partial.exists():
                partial.unlink()
        log.debug("volume_file_written", path=volume_path, bytes=size)
        return size

    def delete(self, volume_path: str) -> None:
        path = self.file_path(volume_path)
        if path.is_dir():
            raise invalid(f"{volume_path} is a directory; the files endpoint deletes files.")
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            raise FilesApiError(
                404, "NOT_FOUND", f"The file {volume_path} does not exist."
            ) from None

    def _volume_path(self, path: Path) -> str:
        return "/Volumes/" + path.relative_to(self.root).as_posix()

    def _too_large(self, size: int) -> FilesApiError:
        return FilesApiError(
            413,
            "REQUEST_LIMIT_EXCEEDED",
            f"The file is {size} bytes or more; the local stack takes files of up to "
            f"{self.max_file_bytes} bytes ({self.max_file_bytes / MiB:g} MiB).",
        )


def workspace_authorizer(
    token: str, oauth: OAuthIssuer | None
) -> Callable[[Request], Awaitable[None]]:
    """A route dependency: the stack's token, or an all-apis OAuth token of `oauth`."""
    expected = f"Bearer {token}".encode()

    async def authorize(request: Request) -> None:
        header = request.headers.get("authorization")
        if header is None:
            raise FilesApiError(401, "UNAUTHENTICATED", "No access token was sent.")
        if hmac.compare_digest(header.encode(), expected):
            return
        if oauth is None or not oauth.allows_apis(header):
            raise FilesApiError(401, "UNAUTHENTICATED", "Invalid access token.")

    return authorize


def _flag(value: str | None, name: str, *, default: bool) -> bool:
    if value is None:
        return default
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise invalid(f"The query parameter {name} must be true or false, got {value!r}.")
    return lowered == "true"


def files_router(volumes: Volumes, token: str, oauth: OAuthIssuer | None = None) -> APIRouter:
    """The Files API over `volumes`, guarded by `token` and the all-apis OAuth tokens of
    `oauth` (add the exception handler too)."""
    guard = workspace_authorizer(token, oauth)
    router = APIRouter(prefix="/api/2.0/fs", dependencies=[Depends(guard)])

    @router.put("/files{file_path:path}")
    async def upload(file_path: str, request: Request) -> Response:
        """Write a file in one request (overwrite=true replaces an existing one)."""
        # "If true or unspecified, an existing file will be overwritten" (the API's docs).
        overwrite = _flag(request.query_params.get("overwrite"), "overwrite", default=True)
        await volumes.write(file_path, request, overwrite=overwrite)
        return Response(status_code=204)

    @router.post("/files{file_path:path}")
    async def multipart(file_path: str, request: Request) -> Response:
        """Multipart uploads are not served by the local stack."""
        volumes.file_path(file_path)
        action = request.query_params.get("action")
        raise FilesApiError(
            501,
            "NOT_IMPLEMENTED",
            f"The local stack does not serve multipart uploads (action={action}); it takes "
            "files in one PUT request, which databricks-sdk uses for files under 50 MiB.",
        )

    @router.delete("/files{file_path:path}")
    async def delete(file_path: str) -> Response:
        """Delete a file."""
        await asyncio.to_thread(volumes.delete, file_path)
        return Response(status_code=204)

    @router.get("/files{file_path:path}")
    async def download(file_path: str) -> Response:
        """A file's bytes."""
        path = volumes.file_path(file_path)
        if not path.is_file():
            raise FilesApiError(404, "NOT_FOUND", f"The file {file_path} does not exist.")
        return FileResponse(path, media_type="application/octet-stream")

    @router.head("/files{file_path:path}")
    async def metadata(file_path: str) -> Response:
        """A file's size and modification time."""
        path = volumes.file_path(file_path)
        if not path.is_file():
            return Response(status_code=404)
        stat = path.stat()
        return Response(
            status_code=200,
            headers={
                "content-length": str(stat.st_size),
                "content-type": "application/octet-stream",
                "last-modified": email.utils.formatdate(stat.st_mtime, usegmt=True),
            },
        )

    return router
