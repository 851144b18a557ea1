"""A scenario's digest: files it names count by their content, not their path."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path


def _portable(value):
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        p = Path(value)
        if p.is_file():
            return "file:" + _file_sha256(str(p), *_stamp(p))
        if p.is_dir():
            desc = next((p / n for n in ("pair.yaml", "config.json") if (p / n).is_file()), None)
            return f"dir:{p.name}" + (":" + _file_sha256(str(desc), *_stamp(desc)) if desc else "")
        return f"path:{p.name}"  # not there (yet): a pair built later, say
    return value


def _stamp(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    """A file's content hash (cached per path, modification time and size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
