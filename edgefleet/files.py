"""Files that appear whole or not at all: written beside their final name, then renamed into place."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` as ``path``; a failed or interrupted write leaves no file a later run could take as done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes of a .npy file (no pickled objects)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
