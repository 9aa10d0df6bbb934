"""The typed shape of one line of the agent's ``results.jsonl`` (schema 1).

The agent (edgefleet/agent/efagent/__init__.py, CONTRACT) documents the contract; this model is the
host's check of it. It rejects what cannot be a measurement (wrong types, a
negative latency, an ``ok`` line without numbers, a failed line that carries a
latency) and accepts fields it does not know, so a newer agent's extra facts
pass through into the raw JSON kept in the database.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, StrictBool, StrictInt,
                      StrictStr, model_validator)

SCHEMA_VERSION = 1
CellStatus = Literal["ok", "error", "missing_runtime"]


class _Tolerant(BaseModel):
    # Unknown keys are kept (extra="allow"): the raw line is stored whole anyway.
    model_config = ConfigDict(extra="allow", frozen=True, strict=True)


class LatencyStats(_Tolerant):
    mean: NonNegativeFloat
    std: NonNegativeFloat
    min: NonNegativeFloat
    max: NonNegativeFloat
    # None where the tool that measured printed no percentiles (TFLite's benchmark_model): never invented.
    p50: NonNegativeFloat | None
    p90: NonNegativeFloat | None
    p99: NonNegativeFloat | None

    @model_validator(mode="after")
    def _ordered(self) -> LatencyStats:
        # Percentiles of one sample are ordered; anything else is a corrupt line, not a measurement.
        ordered = [v for v in (self.min, self.p50, self.p90, self.p99, self.max) if v is not None]
        slack = 1e-9 * max(self.max, 1.0)  # an older numpy's interpolation may round by an ulp
        if any(a > b + slack for a, b in zip(ordered, ordered[1:])):
            raise ValueError("latency statistics are not ordered min <= p50 <= p90 <= p99 <= max")
        return self


class Delegate(_Tolerant):
    name: StrictStr = Field(min_length=1)
    library: StrictStr | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class DelegateCoverage(_Tolerant):
    delegate_nodes: NonNegativeInt | None = None
    total_nodes: NonNegativeInt | None = None


class Thermal(_Tolerant):
    before: list[dict[str, Any]] = Field(default_factory=list)
    after: list[dict[str, Any]] = Field(default_factory=list)


SAMPLES_ENCODING = "f32-us-gzip-b64"


class Samples(_Tolerant):
    """Every timed run as measured (edgefleet.results.samples decodes them)."""

    encoding: Literal["f32-us-gzip-b64"]
    count: NonNegativeInt
    data: StrictStr


class Drift(_Tolerant):
    """The last third of the timed runs against the first third (None: too few runs to tell)."""

    ratio: NonNegativeFloat | None = None
    z: float | None = None
    threshold: NonNegativeFloat | None = None
    drifting: StrictBool | None = None


MEASUREMENTS = ("load_ms", "first_inference_ms", "runs", "duration_s", "latency_ms", "cv", "unstable")
# Measured by newer agents only, so never required; a cell that did not run must not carry them either.
OPTIONAL_MEASUREMENTS = ("robust_cv", "p99_over_p50", "drift", "unstable_reasons", "throttled", "hot", "samples",
                         "device_state")


class ResultLine(_Tolerant):
    schema_version: Literal[1] = Field(alias="schema")
    agent_version: StrictStr | None = None
    run_id: StrictStr = Field(min_length=1)
    device: StrictStr = Field(min_length=1)
    cell: StrictStr = Field(min_length=1)
    variant: StrictStr = Field(min_length=1)
    runtime: StrictStr = Field(min_length=1)
    threads: StrictInt = Field(ge=1)
    delegate: Delegate | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    artifact: StrictStr | None = None
    artifact_sha256: StrictStr | None = None
    artifact_valid: StrictBool = True
    artifact_invalid_reasons: list[StrictStr] = Field(default_factory=list)
    status: CellStatus
    reason: StrictStr | None = None
    emulated: StrictBool
    started: StrictStr | None = None
    finished: StrictStr | None = None

    load_ms: NonNegativeFloat | None = None
    first_inference_ms: NonNegativeFloat | None = None
    warmup_runs: NonNegativeInt | None = None
    runs: NonNegativeInt | None = None
    duration_s: NonNegativeFloat | None = None
    stopped_by: StrictStr | None = None
    latency_ms: LatencyStats | None = None
    cv: NonNegativeFloat | None = None
    unstable: StrictBool | None = None
    rss_before_kb: NonNegativeInt | None = None
    peak_rss_kb: NonNegativeInt | None = None
    delegate_coverage: DelegateCoverage | None = None
    runtime_info: dict[str, Any] | None = None
    inputs: dict[str, Any] | None = None
    outputs: list[dict[str, Any]] | None = None
    thermal: Thermal = Field(default_factory=Thermal)
    env: dict[str, Any] = Field(default_factory=dict)

    warmup_min_runs: NonNegativeInt | None = None
    robust_cv: NonNegativeFloat | None = None
    p99_over_p50: NonNegativeFloat | None = None
    drift: Drift | None = None
    unstable_reasons: list[StrictStr] | None = None
    throttled: StrictBool | None = None
    throttle_reasons: list[StrictStr] | None = None
    hot: StrictBool | None = None
    device_state: dict[str, Any] | None = None
    samples: Samples | None = None
    cooldown: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _status_matches_numbers(self) -> ResultLine:
        if self.status == "ok":
            missing = [name for name in MEASUREMENTS if getattr(self, name) is None and name != "cv"]
            if missing:
                raise ValueError(f"status 'ok' without {', '.join(missing)}")
            if self.runs < 1:
                raise ValueError("status 'ok' with zero timed runs")
            self._check_verdicts()
        else:
            if not self.reason:
                raise ValueError(f"status {self.status!r} needs a reason")
            # A cell that did not run must never look like a (zero) latency.
            present = [name for name in MEASUREMENTS + OPTIONAL_MEASUREMENTS if getattr(self, name) is not None]
            if present:
                raise ValueError(f"status {self.status!r} carries measurements: {', '.join(present)}")
        return self

    def _check_verdicts(self) -> None:
        if self.samples is not None and self.samples.count != self.runs:
            raise ValueError(f"samples holds {self.samples.count} runs, the line says {self.runs}")
        # An agent that gives reasons gives them for exactly the cells it flags.
        if self.unstable_reasons is not None and bool(self.unstable_reasons) != self.unstable:
            raise ValueError(f"unstable is {self.unstable} with reasons {self.unstable_reasons}")

    @property
    def delegate_name(self) -> str | None:
        return self.delegate.name if self.delegate else None


RunState = Literal["not_started", "running", "done", "failed", "interrupted"]


class RunStatus(_Tolerant):
    """The agent's ``status.json`` (or its ``status`` command's output, which sees dead agents)."""

    state: RunState
    pid: StrictInt | None = None
    cells_done: NonNegativeInt | None = None
    cells_total: NonNegativeInt | None = None
    started: StrictStr | None = None
    updated: StrictStr | None = None
    current_cell: StrictStr | None = None
    error: StrictStr | None = None
    reason: StrictStr | None = None
