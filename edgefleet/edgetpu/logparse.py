"""Parse what ``edgetpu_compiler -s`` prints into a typed MappingReport.

The compiler's summary is the only record of which ops landed on the Edge TPU.
Its shape varies between compiler versions and outcomes: the memory and
subgraph lines are absent from some versions, and the two "Number of operations
that will run on ..." lines are printed only when something falls to the CPU.
The per-operator table is always there, so it is the ground truth the header
counts are checked against; a disagreement is recorded, never papered over.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, computed_field

from edgefleet.errors import BuildError

MAPPED = "Mapped to Edge TPU"

KNOWN_STATUSES: tuple[str, ...] = (
    MAPPED,
    "Operation not supported",
    "Operation version not supported",
    "More than one subgraph is not supported",
    "Operation is otherwise supported, but not mapped due to some unspecified limitation",
    "Operation is working on an unsupported data type",
    "Tensor has unsupported rank (up to 3 innermost dimensions mapped)",
    "Only Strided-Slice with unitary strides supported",
)

_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}

_VERSION_RE = re.compile(r"^Edge TPU Compiler version\s+(\S+)")
_COMPILE_TIME_RE = re.compile(r"^Model compiled successfully in\s+(\d+)\s*ms")
_KEY_VALUE_RE = re.compile(r"^(?P<key>[A-Z][A-Za-z -]*?):\s*(?P<value>.+?)\s*$")
_TABLE_HEADER_RE = re.compile(r"^Operator\s+Count\s+Status\s*$")
_ROW_RE = re.compile(r"^(?P<op>\S+)\s+(?P<count>\d+)\s+(?P<status>\S.*?)\s*$")
_SIZE_RE = re.compile(r"^(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>B|KiB|MiB|GiB)$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LoggedSize(_Frozen):
    """A size as the compiler prints it ("2.77MiB"), with its approximate byte count."""

    text: str
    approx_bytes: int
    # The compiler prints two decimals, so the true size lies within half a unit of the last digit.
    tolerance_bytes: int

    @classmethod
    def parse(cls, text: str) -> LoggedSize:
        m = _SIZE_RE.match(text.strip())
        if m is None:
            raise BuildError(f"unreadable size {text!r} in the edgetpu_compiler log")
        unit = _UNITS[m["unit"]]
        decimals = len(m["num"].partition(".")[2])
        return cls(text=text.strip(), approx_bytes=round(float(m["num"]) * unit),
                   tolerance_bytes=max(1, round(unit * 0.5 * 10 ** -decimals)))


class OperatorRow(_Frozen):
    operator: str
    count: int
    status: str
    known_status: bool

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mapped(self) -> bool:
        return self.status == MAPPED


class MappingReport(_Frozen):
    compiler_version: str
    compile_time_ms: int | None = None
    input_model: str | None = None
    input_size: LoggedSize | None = None
    output_model: str | None = None
    output_size: LoggedSize | None = None
    on_chip_memory_available: LoggedSize | None = None
    on_chip_memory_used: LoggedSize | None = None
    off_chip_memory_used: LoggedSize | None = None
    subgraphs: int | None = None
    operation_log: str | None = None
    # From the compiler's own count lines when it printed them, else derived from the table.
    total_ops: int
    ops_on_tpu: int
    ops_on_cpu: int
    counts_source: str  # "log" or "table"
    rows: tuple[OperatorRow, ...]
    unknown_statuses: tuple[str, ...] = ()
    inconsistencies: tuple[str, ...] = ()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def fully_mapped(self) -> bool:
        # Every source must agree: an inconsistent log is not evidence of a clean mapping.
        return (self.ops_on_cpu == 0 and all(r.mapped for r in self.rows)
                and not self.inconsistencies)

    @property
    def table_ops_on_tpu(self) -> int:
        return sum(r.count for r in self.rows if r.mapped)

    @property
    def table_ops_on_cpu(self) -> int:
        return sum(r.count for r in self.rows if not r.mapped)

    def rows_for(self, operator: str) -> list[OperatorRow]:
        return [r for r in self.rows if r.operator == operator]


def parse_compiler_log(text: str) -> MappingReport:
    """Parse the output of one ``edgetpu_compiler -s`` run that compiled one model."""
    reports = parse_compiler_logs(text)
    if len(reports) != 1:
        raise BuildError(f"the edgetpu_compiler log holds {len(reports)} model reports; "
                         "use parse_compiler_logs for a multi-model or segmented compile")
    return reports[0]


def parse_compiler_logs(text: str) -> list[MappingReport]:
    """Parse a log that may report several models (one block per ``Input model:``)."""
    lines = [line.rstrip() for line in text.splitlines()]
    version, compile_time = _preamble(lines)
    blocks = _split_blocks(lines)
    if not blocks:
        raise BuildError("the edgetpu_compiler log has no operator table: the compile did not "
                         "produce a mapping report", log=_error_lines(lines) or lines)
    return [_parse_block(block, version, compile_time) for block in blocks]


def _preamble(lines: list[str]) -> tuple[str, int | None]:
    version = None
    compile_time = None
    for line in lines:
        if version is None and (m := _VERSION_RE.match(line.strip())):
            version = m[1]
        if compile_time is None and (m := _COMPILE_TIME_RE.match(line.strip())):
            compile_time = int(m[1])
    if version is None:
        raise BuildError("not an edgetpu_compiler log: no 'Edge TPU Compiler version' line",
                         log=[line for line in lines if line.strip()][:10])
    return version, compile_time


def _split_blocks(lines: list[str]) -> list[list[str]]:
    # Compiler 14 prints "Input:"; later versions print "Input model:".
    starts = [i for i, line in enumerate(lines) if line.strip().startswith(("Input model:", "Input:"))]
    if not starts:
        # Some write-ups trim the header; a lone table still is one report.
        return [lines] if any(_TABLE_HEADER_RE.match(line.strip()) for line in lines) else []
    bounds = [*starts, len(lines)]
    return [lines[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def _parse_block(lines: list[str], version: str, compile_time: int | None) -> MappingReport:
    fields: dict[str, str] = {}
    rows: list[OperatorRow] = []
    in_table = False
    for raw in lines:
        line = raw.strip()
        if _TABLE_HEADER_RE.match(line):
            in_table = True
            continue
        if in_table:
            if not line:
                if rows:
                    in_table = False
                continue
            m = _ROW_RE.match(line)
            if m is None:
                in_table = False
            else:
                status = m["status"]
                rows.append(OperatorRow(operator=m["op"], count=int(m["count"]), status=status,
                                        known_status=status in KNOWN_STATUSES))
                continue
        if (m := _KEY_VALUE_RE.match(line)) is not None:
            fields.setdefault(m["key"], m["value"])
    if not rows:
        raise BuildError("the edgetpu_compiler log has an empty operator table",
                         log=_error_lines(lines) or lines)
    return _assemble(fields, rows, version, compile_time)


def _assemble(fields: dict[str, str], rows: list[OperatorRow], version: str,
              compile_time: int | None) -> MappingReport:
    table_total = sum(r.count for r in rows)
    table_tpu = sum(r.count for r in rows if r.mapped)
    table_cpu = table_total - table_tpu
    logged_total = _int_field(fields, "Total number of operations")
    logged_tpu = _int_field(fields, "Number of operations that will run on Edge TPU")
    logged_cpu = _int_field(fields, "Number of operations that will run on CPU")

    problems: list[str] = []
    if logged_total is not None and logged_total != table_total:
        problems.append(f"'Total number of operations: {logged_total}' but the table rows sum to {table_total}")
    if logged_tpu is not None and logged_tpu != table_tpu:
        problems.append(f"the log says {logged_tpu} ops run on the Edge TPU but the table maps {table_tpu}")
    if logged_cpu is not None and logged_cpu != table_cpu:
        problems.append(f"the log says {logged_cpu} ops run on the CPU but the table leaves {table_cpu} unmapped")
    if (logged_tpu is None) != (logged_cpu is None):
        problems.append("the log prints only one of the two 'Number of operations that will run on ...' lines")
    if logged_tpu is None and logged_cpu is None and table_cpu:
        # The compiler omits these lines only when everything maps.
        problems.append(f"no TPU/CPU count lines (printed only when ops fall to the CPU) yet the table "
                        f"leaves {table_cpu} ops unmapped")

    from_log = logged_tpu is not None and logged_cpu is not None
    ops_on_tpu = logged_tpu if from_log else table_tpu
    ops_on_cpu = logged_cpu if from_log else table_cpu
    unknown = tuple(dict.fromkeys(r.status for r in rows if not r.known_status))
    return MappingReport(
        compiler_version=version,
        compile_time_ms=compile_time,
        input_model=fields.get("Input model", fields.get("Input")),
        input_size=_size_field(fields, "Input size"),
        output_model=fields.get("Output model", fields.get("Output")),
        output_size=_size_field(fields, "Output size"),
        on_chip_memory_available=_size_field(fields, "On-chip memory available for caching model parameters"),
        on_chip_memory_used=_size_field(fields, "On-chip memory used for caching model parameters"),
        off_chip_memory_used=_size_field(fields, "Off-chip memory used for streaming uncached model parameters"),
        subgraphs=_int_field(fields, "Number of Edge TPU subgraphs"),
        operation_log=fields.get("Operation log"),
        total_ops=logged_total if logged_total is not None else table_total,
        ops_on_tpu=ops_on_tpu,  # type: ignore[arg-type]
        ops_on_cpu=ops_on_cpu,  # type: ignore[arg-type]
        counts_source="log" if from_log else "table",
        rows=tuple(rows),
        unknown_statuses=unknown,
        inconsistencies=tuple(problems),
    )


def _int_field(fields: dict[str, str], key: str) -> int | None:
    value = fields.get(key)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise BuildError(f"edgetpu_compiler log: {key!r} is not a number: {value!r}") from None


def _size_field(fields: dict[str, str], key: str) -> LoggedSize | None:
    value = fields.get(key)
    return None if value is None else LoggedSize.parse(value)


def _error_lines(lines: Iterable[str]) -> list[str]:
    return [line for line in lines if re.search(r"\b(error|invalid|fail)", line, re.IGNORECASE)]
