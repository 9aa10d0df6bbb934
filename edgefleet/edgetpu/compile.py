"""Run ``edgetpu_compiler`` and check what it made.

An exit code of 0 is not proof of a compiled model: the output must exist, be
larger than a stub, match the size the compiler itself logged, and the log must
parse into a mapping report that describes this compile. ``verify_compiled``
then reads the output's flatbuffer: it must hold the ``edgetpu-custom-op`` (one
per Edge TPU subgraph the log reports), exactly the CPU ops the log's table
leaves unmapped, and the log's "Input model" must be the file this step gave
the compiler; a wrong or foreign log fails the compile, naming what disagrees.
When the compiler is not installed (it ships only for x86-64 Debian/Ubuntu) the
result says so instead of raising, so a planner on another machine can still
record why there is no Edge TPU artifact.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from edgefleet.edgetpu.logparse import MappingReport, parse_compiler_logs
from edgefleet.errors import BuildError, SourceError

COMPILER = "edgetpu_compiler"
NOT_FOUND_REASON = ("edgetpu_compiler not found on PATH; it exists only for x86-64 Debian/Ubuntu from Coral's apt "
                    "repository (the edgetpu builder image installs it)")
LOG_FILE = "compiler.log"
RESULT_FILE = "compile.json"
# The one operator the compiler puts in place of everything it maps: the Edge TPU executable rides in its options.
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
# How tflite_report names a custom operator in its op histogram.
_CUSTOM_PREFIX = "CUSTOM:"


class CompilerOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    search_delegate: bool = False
    min_runtime_version: int | None = Field(default=None, ge=10)
    num_segments: int | None = Field(default=None, ge=1)
    timeout_s: float = Field(default=600.0, gt=0)
    # A compiled model carries at least the flatbuffer framing and the TPU executable; anything
    # smaller is a stub left by a failed or faked run.
    min_output_bytes: int = Field(default=1024, ge=1)


class CompileResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    compiled: bool
    reason: str | None = None
    command: list[str]
    returncode: int | None = None
    compiler_version: str | None = None
    outputs: list[str] = []
    log_file: str | None = None
    # One report per compiled model; more than one only for a segmented compile.
    mappings: list[MappingReport] = []

    @property
    def fully_mapped(self) -> bool | None:
        return None if not self.mappings else all(m.fully_mapped for m in self.mappings)


def compiler_command(model: Path, out_dir: Path, options: CompilerOptions, *, compiler: str = COMPILER) -> list[str]:
    command = [compiler, "-s", "-o", str(out_dir)]
    if options.search_delegate:
        command.append("--search_delegate")
    if options.min_runtime_version is not None:
        command += ["--min_runtime_version", str(options.min_runtime_version)]
    if options.num_segments is not None:
        command += ["--num_segments", str(options.num_segments)]
    command.append(str(model))
    return command


def expected_outputs(model: Path, out_dir: Path, options: CompilerOptions) -> list[Path]:
    n = options.num_segments or 1
    if n == 1:
        return [out_dir / f"{model.stem}_edgetpu.tflite"]
    return [out_dir / f"{model.stem}_segment_{i}_of_{n}_edgetpu.tflite" for i in range(n)]


def compile_model(model: Path, out_dir: Path, options: CompilerOptions | None = None, *,
                  log: Callable[[str], None] = print) -> CompileResult:
    """Compile ``model`` into ``out_dir``; write ``compiler.log`` and ``compile.json`` there."""
    options = options or CompilerOptions()
    if not model.is_file():
        raise BuildError(f"the model to compile does not exist: {model}")
    out_dir.mkdir(parents=True, exist_ok=True)
    command = compiler_command(model, out_dir, options)
    executable = shutil.which(COMPILER)
    if executable is None:
        log(NOT_FOUND_REASON)
        return _write(out_dir, CompileResult(compiled=False, reason=NOT_FOUND_REASON, command=command))

    log(" ".join(command))
    try:
        proc = subprocess.run([executable, *command[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=options.timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        output = exc.output if isinstance(exc.output, str) else (exc.output or b"").decode(errors="replace")
        raise BuildError(f"edgetpu_compiler did not finish within {options.timeout_s:g} s", command=command,
                         log=output.splitlines()) from None
    (out_dir / LOG_FILE).write_text(proc.stdout)
    lines = proc.stdout.splitlines()
    for line in lines:
        log(line)
    if proc.returncode != 0:
        raise BuildError("edgetpu_compiler failed", command=command, returncode=proc.returncode, log=lines)

    mappings = parse_compiler_logs(proc.stdout)
    outputs = expected_outputs(model, out_dir, options)
    _check_outputs(outputs, mappings, options, command, lines)
    for path, mapping in zip(outputs, mappings, strict=True):
        try:
            checked = verify_compiled(path, mapping, compiled=str(model), segments=options.num_segments)
        except BuildError as exc:
            raise BuildError(str(exc), command=command, returncode=0, log=lines) from None
        log(checked.summary())
    return _write(out_dir, CompileResult(
        compiled=True, command=command, returncode=proc.returncode,
        compiler_version=mappings[0].compiler_version, outputs=[p.name for p in outputs],
        log_file=LOG_FILE, mappings=mappings))


def _check_outputs(outputs: list[Path], mappings: list[MappingReport], options: CompilerOptions,
                   command: list[str], lines: list[str]) -> None:
    for path in outputs:
        if not path.is_file():
            raise BuildError(f"edgetpu_compiler exited 0 but did not write {path.name}", command=command,
                             returncode=0, log=lines)
        size = path.stat().st_size
        if size < options.min_output_bytes:
            raise BuildError(f"edgetpu_compiler exited 0 but {path.name} is a {size}-byte stub "
                             f"(expected at least {options.min_output_bytes} bytes)", command=command,
                             returncode=0, log=lines)
    if len(outputs) != len(mappings):
        # One report per model written: any other count is a log of some other compile.
        raise BuildError(f"the compiler log reports {len(mappings)} compiled model(s) but this compile wrote "
                         f"{len(outputs)} ({', '.join(p.name for p in outputs)}): the log is not this compile's",
                         command=command, returncode=0, log=lines)
    for path, mapping in zip(outputs, mappings, strict=True):
        logged = mapping.output_size
        if logged is not None and abs(path.stat().st_size - logged.approx_bytes) > logged.tolerance_bytes:
            raise BuildError(f"{path.name} is {path.stat().st_size} bytes but the compiler logged an output "
                             f"size of {logged.text}: the file is not the model the compiler reported",
                             command=command, returncode=0, log=lines)


@dataclass(frozen=True)
class CompiledModel:
    """What ``verify_compiled`` found in a compiled model: its Edge TPU ops and the ops left to the CPU."""

    file: str
    edgetpu_ops: int
    cpu_ops: dict[str, int]

    def summary(self) -> str:
        return (f"verified {self.file}: {self.edgetpu_ops} {EDGETPU_CUSTOM_OP} + CPU ops {_histogram(self.cpu_ops)}, "
                "as the compiler log says")


def verify_compiled(output: Path, mapping: MappingReport, *, compiled: str,
                    segments: int | None = None) -> CompiledModel:
    """Check that ``output`` is the Edge TPU model ``mapping`` (its compiler log) describes.

    ``compiled`` is the model path exactly as the compiler was given it, which is what the log echoes
    as "Input model". Every disagreement is listed in one BuildError.
    """
    ops = _op_histogram(output)
    edgetpu_ops = ops.pop(_CUSTOM_PREFIX + EDGETPU_CUSTOM_OP, 0)
    problems = [*_edgetpu_op_problems(edgetpu_ops, mapping, ops),
                *_cpu_op_problems(ops, mapping),
                *_input_problems(mapping, compiled, segments)]
    if problems:
        raise BuildError(f"{output.name} is not the compiled model its edgetpu_compiler log describes: "
                         + "; ".join(problems))
    return CompiledModel(file=output.name, edgetpu_ops=edgetpu_ops, cpu_ops=dict(sorted(ops.items())))


def _op_histogram(path: Path) -> Counter[str]:
    # tflite_report is the one reader of a model's operator codes; custom ops come back as "CUSTOM:<name>".
    from edgefleet.analysis.tflite_report import describe_tflite

    try:
        return Counter(describe_tflite(path)["ops"])
    except SourceError as exc:
        raise BuildError(f"the compiler's output is not a usable model: {exc}") from None


def _edgetpu_op_problems(edgetpu_ops: int, mapping: MappingReport, cpu_ops: Counter[str]) -> list[str]:
    if edgetpu_ops == 0:
        return [f"it has no {EDGETPU_CUSTOM_OP} operator, so nothing in it runs on the Edge TPU "
                f"(its ops: {_histogram(cpu_ops)})"]
    if mapping.subgraphs is not None and edgetpu_ops != mapping.subgraphs:
        return [f"it has {edgetpu_ops} {EDGETPU_CUSTOM_OP} operators but the log reports "
                f"{mapping.subgraphs} Edge TPU subgraph(s)"]
    if mapping.ops_on_tpu == 0:
        return [f"it has {edgetpu_ops} {EDGETPU_CUSTOM_OP} operator(s) but the log maps no op to the Edge TPU"]
    return []


def _cpu_op_problems(cpu_ops: Counter[str], mapping: MappingReport) -> list[str]:
    # The table lists every op of the input model; what it leaves unmapped stays in the output as itself.
    unmapped: Counter[str] = Counter()
    for row in mapping.rows:
        if not row.mapped:
            unmapped[row.operator] += row.count
    problems = []
    if cpu_ops != unmapped:
        problems.append(f"the log's operator table leaves {_histogram(unmapped)} on the CPU but the model holds "
                        f"{_histogram(cpu_ops)} outside the Edge TPU")
    if mapping.counts_source == "log" and mapping.ops_on_cpu != sum(cpu_ops.values()):
        problems.append(f"the log says {mapping.ops_on_cpu} ops run on the CPU but the model has "
                        f"{sum(cpu_ops.values())} ops outside the Edge TPU")
    return problems


def _input_problems(mapping: MappingReport, compiled: str, segments: int | None) -> list[str]:
    logged = mapping.input_model
    if logged is None:
        return ["the log does not name its input model, so it cannot be tied to this compile"]
    if _same_path(logged, compiled):
        return []
    stem = Path(compiled).stem
    # No segmented compile has been recorded here; its per-segment inputs are accepted by name.
    if segments and re.fullmatch(rf"{re.escape(stem)}_segment_\d+_of_{segments}\.tflite", Path(logged).name):
        return []
    return [f"the log's input model is {logged!r} but this step compiled {compiled!r}"]


def _same_path(a: str, b: str) -> bool:
    # The compiler echoes the path it was given (a relative one is relative to where it ran: our cwd);
    # realpath too, in case it prints the file a symlinked input resolves to.
    return os.path.abspath(a) == os.path.abspath(b) or os.path.realpath(a) == os.path.realpath(b)


def _histogram(ops: Counter[str] | dict[str, int]) -> str:
    shown = [f"{name.removeprefix(_CUSTOM_PREFIX)} x{n}" for name, n in sorted(ops.items()) if n]
    return ", ".join(shown) if shown else "no ops"


def _write(out_dir: Path, result: CompileResult) -> CompileResult:
    (out_dir / RESULT_FILE).write_text(result.model_dump_json(indent=2))
    return result
