"""Run ``edgetpu_compiler`` and check what it made.

An exit code of 0 is not proof of a compiled model: the output must exist, be
larger than a stub, match the size the compiler itself logged, and the log must
parse into a mapping report. When the compiler is not installed (it ships only
for x86-64 Debian/Ubuntu) the result says so instead of raising, so a planner on
another machine can still record why there is no Edge TPU artifact.
"""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from edgefleet.edgetpu.logparse import MappingReport, parse_compiler_logs
from edgefleet.errors import BuildError

COMPILER = "edgetpu_compiler"
NOT_FOUND_REASON = ("edgetpu_compiler not found on PATH; it exists only for x86-64 Debian/Ubuntu from Coral's apt "
                    "repository (the edgetpu builder image installs it)")
LOG_FILE = "compiler.log"
RESULT_FILE = "compile.json"


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
    if len(outputs) == len(mappings):
        for path, mapping in zip(outputs, mappings, strict=True):
            logged = mapping.output_size
            if logged is not None and abs(path.stat().st_size - logged.approx_bytes) > logged.tolerance_bytes:
                raise BuildError(f"{path.name} is {path.stat().st_size} bytes but the compiler logged an output "
                                 f"size of {logged.text}: the file is not the model the compiler reported",
                                 command=command, returncode=0, log=lines)


def _write(out_dir: Path, result: CompileResult) -> CompileResult:
    (out_dir / RESULT_FILE).write_text(result.model_dump_json(indent=2))
    return result
