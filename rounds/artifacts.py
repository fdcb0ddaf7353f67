"""Tensor files on Django storage: receiving uploads, writing versions, reading them back.

Uploads are streamed to a temporary file on the same disk as the media root (hashing as they
arrive, bounded in size) and then moved into storage by rename, never held in memory whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.core.handlers.asgi import ASGIRequest
from django.http import FileResponse, HttpRequest, HttpResponseBase, StreamingHttpResponse

from clients.sdk import codec
from flportal.errors import PayloadTooLarge, ValidationFailed


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Blob:
    """A tensor file on local disk, with its digest and size."""

    path: Path
    sha256: str
    size: int


class _MovableFile(File):
    """Lets FileSystemStorage move the file into place instead of copying it."""

    def temporary_file_path(self) -> str:
        return str(self.name)


def temp_dir() -> Path:
    path = Path(settings.MEDIA_ROOT) / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def receive(stream: Readable, *, max_bytes: int) -> Iterator[Blob]:
    """Copy ``stream`` to a temporary file, hashing it; the file is removed on exit."""
    digest = hashlib.sha256()
    size = 0
    handle, name = tempfile.mkstemp(dir=temp_dir(), suffix=".upload")
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            while chunk := stream.read(settings.FLPORTAL_UPLOAD_CHUNK_BYTES):
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(
                        f"Update exceeds the limit of {max_bytes} bytes.", code="update_too_large"
                    )
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise ValidationFailed("The request body is empty.", code="empty_body")
        yield Blob(path=path, sha256=digest.hexdigest(), size=size)
    finally:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def written(tensors: Mapping[str, np.ndarray]) -> Iterator[Blob]:
    """Encode ``tensors`` to a temporary safetensors file; removed on exit unless stored."""
    handle, name = tempfile.mkstemp(dir=temp_dir(), suffix=".safetensors")
    os.close(handle)
    path = Path(name)
    try:
        codec.write(path, tensors)
        yield Blob(path=path, sha256=file_sha256(path), size=path.stat().st_size)
    finally:
        path.unlink(missing_ok=True)


def store(blob: Blob, name: str) -> str:
    """Move ``blob`` into Django storage under ``name`` (or a free variant); returns the name."""
    with _MovableFile(blob.path.open("rb"), name=str(blob.path)) as file:
        return default_storage.save(name, file)


def delete(name: str) -> None:
    if name:
        default_storage.delete(name)


@contextlib.contextmanager
def local_path(name: str) -> Iterator[Path]:
    """A local path for a stored file: the file itself on disk storage, else a downloaded copy."""
    try:
        yield Path(default_storage.path(name))
        return
    except NotImplementedError:
        pass
    handle, tmp = tempfile.mkstemp(dir=temp_dir(), suffix=".safetensors")
    try:
        with os.fdopen(handle, "wb") as out, default_storage.open(name, "rb") as src:
            shutil.copyfileobj(src, out, length=settings.FLPORTAL_UPLOAD_CHUNK_BYTES)
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def download_response(name: str, request: HttpRequest) -> HttpResponseBase:
    """Stream a stored file: an async iterator under ASGI (no thread hop per chunk, no copy of
    the whole file in memory), a plain file response under WSGI."""
    if not isinstance(request, ASGIRequest):
        return FileResponse(default_storage.open(name, "rb"))

    async def chunks() -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(default_storage.open, name, "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, 1 << 20):
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    return StreamingHttpResponse(chunks())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fp:
        while chunk := fp.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def validate(blob: Blob, expected: list[codec.TensorSpec]) -> None:
    """The checks an uploaded update must pass: a valid file that fits the model, all finite."""
    with blob.path.open("rb") as fp:
        layout = codec.read_layout(fp, total_bytes=blob.size)
    codec.check_compatible(layout.specs, expected)
    codec.verify_with_library(blob.path)
    codec.check_finite(codec.open_arrays(blob.path, layout=layout))
