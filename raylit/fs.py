"""Paths that may be local or remote (``s3://``, ``gs://`` … through pyarrow.fs), with atomic writes."""

import io
import os
import tempfile
import threading
from typing import Any, Callable

import torch


def is_remote(path: str | os.PathLike) -> bool:
    s = str(path)
    return "://" in s and not s.startswith("file://")


def _fs(path: str) -> tuple[Any, str]:
    from pyarrow import fs as pafs

    return pafs.FileSystem.from_uri(str(path))


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return "/".join([str(base).rstrip("/")] + [p.strip("/") for p in parts])
    return os.path.join(base, *parts)


def makedirs(path: str) -> None:
    if is_remote(path):
        fs, p = _fs(path)
        fs.create_dir(p, recursive=True)
    else:
        os.makedirs(path, exist_ok=True)


def exists(path: str) -> bool:
    if is_remote(path):
        from pyarrow import fs as pafs

        fs, p = _fs(path)
        return fs.get_file_info(p).type != pafs.FileType.NotFound
    return os.path.exists(path)


def remove(path: str) -> None:
    if is_remote(path):
        fs, p = _fs(path)
        fs.delete_file(p)
    elif os.path.lexists(path):
        os.remove(path)


def write_bytes_atomic(data: bytes | memoryview, path: str) -> None:
    """Write ``data`` so that ``path`` either keeps its old content or holds all of ``data``: never a
    truncated file. Local files go through a temporary file and ``os.replace``; object stores only make an
    upload visible once it completes."""
    if is_remote(path):
        fs, p = _fs(path)
        with fs.open_output_stream(p) as f:
            f.write(data)
        return
    _write_local_atomic(lambda f: f.write(data), path)


def _write_local_atomic(write: Callable[[Any], Any], path: str) -> None:
    """``write(f)`` into a temporary file next to ``path`` (fsynced), then ``os.replace`` it onto ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_bytes(path: str) -> bytes:
    if is_remote(path):
        fs, p = _fs(path)
        with fs.open_input_stream(p) as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


# A checkpoint callback's background writer (raylit.async_checkpoint) takes the saves of the thread it captures.
_redirect = threading.local()


def _redirect_to(writer: Any) -> Any:
    """Hand this thread's ``save_torch`` calls to ``writer`` (None: write them here); returns the previous one."""
    previous = getattr(_redirect, "writer", None)
    _redirect.writer = writer
    return previous


def save_torch(obj: Any, path: str) -> None:
    """``torch.save`` to ``path``, atomically. Inside ``AsyncCheckpointWriter.capture`` (a checkpoint callback's
    save) the object is snapshotted and handed to the callback's background writer instead."""
    writer = getattr(_redirect, "writer", None)
    if writer is not None:
        writer.submit(obj, str(path))
        return
    write_torch(obj, path)


def write_torch(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` atomically, here and now. Local files are streamed into the temporary file
    (through a file object, so the archive's record names are those of an in-memory save); object stores get
    the whole serialised buffer in one upload."""
    path = str(path)
    if is_remote(path):
        buf = io.BytesIO()
        torch.save(obj, buf)
        write_bytes_atomic(buf.getbuffer(), path)
        return
    _write_local_atomic(lambda f: torch.save(obj, f), path)
