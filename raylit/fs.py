"""Paths that may be local or remote (``s3://``, ``gs://`` … through pyarrow.fs), with atomic writes."""

import io
import os
import tempfile
from typing import Any

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


def write_bytes_atomic(data: bytes, path: str) -> None:
    """Write ``data`` so that ``path`` either keeps its old content or holds all of ``data``: never a
    truncated file. Local files go through a temporary file and ``os.replace``; object stores only make an
    upload visible once it completes."""
    if is_remote(path):
        fs, p = _fs(path)
        with fs.open_output_stream(p) as f:
            f.write(data)
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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


def save_torch(obj: Any, path: str) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(buf.getvalue(), str(path))
