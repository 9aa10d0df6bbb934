"""Keras -> TF SavedModel, and the report of a SavedModel directory."""
from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgefleet.convert.tflite import load_keras
from edgefleet.errors import BuildError, SourceError

# TF writes a fresh random UUID into fingerprint.pb on every save.
_FINGERPRINT = "fingerprint.pb"


def export_saved_model(source: Path, out: Path, *, log: Callable[[str], None] = print) -> None:
    """Write ``source`` (.keras) as a SavedModel directory ``out`` with a ``serving_default`` signature."""
    model = load_keras(source)
    log(f"exporting {source.name} as a SavedModel")
    printed = io.StringIO()
    try:
        # Keras prints the endpoint summary to stdout; keep it in our log instead.
        with contextlib.redirect_stdout(printed):
            model.export(str(out), format="tf_saved_model")
    except Exception as exc:
        raise BuildError(f"SavedModel export of {source.name!r} failed: {type(exc).__name__}: {exc}",
                         log=printed.getvalue().splitlines()) from None
    for line in printed.getvalue().splitlines():
        log(line)


def describe_saved_model(path: Path) -> dict[str, Any]:
    """Size, files (relative, sorted) and signatures with their input/output specs."""
    import tensorflow as tf

    if not (path / "saved_model.pb").is_file():
        raise SourceError(f"directory {path.name!r} is not a SavedModel (no saved_model.pb)")
    files = sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for f in files:
        if f.name == _FINGERPRINT:
            continue
        digest.update(f.relative_to(path).as_posix().encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise SourceError(f"cannot load SavedModel {path.name!r}: {type(exc).__name__}: {exc}") from None
    signatures = {}
    for key, fn in loaded.signatures.items():
        signatures[key] = {
            "inputs": {name: _spec(s) for name, s in fn.structured_input_signature[1].items()},
            "outputs": {name: _spec(s) for name, s in fn.structured_outputs.items()},
        }
    return {
        "format": "savedmodel",
        "file": path.name,
        "size_bytes": sum(f.stat().st_size for f in files),
        # Over relative names and contents (not the random fingerprint), the same wherever the directory lives.
        "sha256": digest.hexdigest(),
        "files": [f.relative_to(path).as_posix() for f in files],
        "signatures": signatures,
    }


def _spec(spec: Any) -> dict[str, Any]:
    return {"dtype": spec.dtype.name, "shape": [-1 if d is None else int(d) for d in spec.shape]}
