"""A cell's raw latency samples, as the agent packed them into its result line (``samples``): every
timed run, so any statistic can be recomputed on the host long after the run."""
from __future__ import annotations

import base64
import binascii
import gzip
import json
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgefleet.errors import ResultsError
from edgefleet.results.db import CellRecord
from edgefleet.results.schema import SAMPLES_ENCODING


def decode_samples(samples: Mapping[str, Any]) -> np.ndarray:
    """The timed runs in milliseconds (float64), in the order they ran."""
    if samples.get("encoding") != SAMPLES_ENCODING:
        raise ResultsError(f"samples encoded as {samples.get('encoding')!r}; this edgefleet reads {SAMPLES_ENCODING}")
    try:
        raw = gzip.decompress(base64.b64decode(samples["data"], validate=True))
    except (KeyError, TypeError, binascii.Error, OSError, EOFError, zlib.error) as exc:
        raise ResultsError(f"samples data is not gzip in base64: {exc}") from None
    if len(raw) % 4:
        raise ResultsError(f"samples data holds {len(raw)} bytes, not whole float32 values")
    micros = np.frombuffer(raw, dtype="<f4")
    if len(micros) != samples.get("count"):
        raise ResultsError(f"samples data holds {len(micros)} runs, its count says {samples.get('count')}")
    return micros.astype(np.float64) / 1000.0


def cell_samples(cell: CellRecord) -> np.ndarray | None:
    """A stored cell's timed runs in ms; None for a cell without samples (it failed, or an older agent)."""
    samples = json.loads(cell.raw).get("samples")
    return None if samples is None else decode_samples(samples)
