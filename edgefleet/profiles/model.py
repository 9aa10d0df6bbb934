"""The typed shape of a target profile (``targets/<name>.yaml``).

Every model is frozen and forbids unknown keys, so a typo is an error at load
and everything downstream receives validated values.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from edgefleet.config.validate import did_you_mean
from edgefleet.lab.config import Lab
from edgefleet.runtimes import delegate_names, runtime_for_profile
from edgefleet.transport.connections import Connection, LocalConnection, PlainText, no_hidden_characters

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"

TfliteQuantization = Literal["fp32", "fp16", "dynamic", "int8", "full-int8", "full-int8-int8io"]
OpenvinoPrecision = Literal["fp32", "fp16"]
Precision = Literal["fp32", "fp16", "dynamic", "int8", "full-int8", "full-int8-int8io"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Device(Strict):
    board: PlainText = Field(description="The board this target stands for, in words.")
    arch: Literal["armv7l", "aarch64", "x86_64"] = Field(description="`uname -m` on the device.")
    os: PlainText = Field(description="Operating system and release.")
    python: str | None = Field(None, pattern=r"^3\.\d+$",
                               description="The device's Python, major.minor; none on Android (benchmark_model runs there).")
    glibc: str | None = Field(None, pattern=r"^\d+\.\d+$", description="glibc version; decides manylinux tags.")


class Runtime(Strict):
    name: PlainText = Field(description="The on-device inference runtime, e.g. tflite-runtime (edgefleet/runtimes/).")
    provided_by: Literal["wheelhouse", "device"] = Field(
        "wheelhouse", description="wheelhouse: edgefleet ships wheels; device: already installed (apt, JetPack).")
    packages: tuple[PlainText, ...] = Field((), description="Pip requirement strings for the device wheelhouse.")
    optional_packages: tuple[PlainText, ...] = Field((), description="Shipped where wheels exist for the platform.")
    platform_tags: tuple[PlainText, ...] = Field((), description="Wheel platform tags the device accepts.")
    os_packages: dict[PlainText, PlainText] = Field(
        default_factory=dict,
        description="Python module -> the OS package that provides it where PyPI has no wheel for the device "
                    "(numpy on armv7l: python3-numpy). The runtime venv sees the OS's site-packages, and deploy "
                    "checks the module is there before sending anything.")
    note: str | None = Field(None, description="How the runtime gets onto the device when not from wheels.")
    # Runtimes measured by a device binary instead of the agent (Android's benchmark_model) only:
    benchmark_binary: PlainText | None = Field(
        None, description="A local benchmark_model binary for the device (absolute path, or ~); default: the one "
                          "the android.aar step builds.")
    op_profiling: bool = Field(False, description="Run benchmark_model with --enable_op_profiling=true: each result "
                                                  "says how many nodes ran on the delegate and how many on the CPU.")

    @field_validator("benchmark_binary")
    @classmethod
    def _binary_exists(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.is_absolute():
            raise ValueError(f"runtime.benchmark_binary {value!r} must be an absolute path (or start with ~)")
        if not path.is_file():
            raise ValueError(f"runtime.benchmark_binary {value!r}: no such file; build it (invoke build) or fix "
                             "the path")
        return str(path)

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        try:
            runtime_for_profile(value)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        return value

    @model_validator(mode="after")
    def _wheelhouse_needs_tags(self) -> Runtime:
        sources = runtime_for_profile(self.name).sources
        if self.provided_by not in sources:
            raise ValueError(f"runtime {self.name!r} cannot be provided_by {self.provided_by!r} "
                             f"(it comes from: {', '.join(sources)})")
        if self.provided_by == "wheelhouse" and self.packages and not self.platform_tags:
            raise ValueError("runtime.platform_tags is required when packages come from the wheelhouse")
        if (self.benchmark_binary or self.op_profiling) and runtime_for_profile(self.name).agent:
            raise ValueError(f"runtime.benchmark_binary and runtime.op_profiling apply to runtimes measured by a "
                             f"device binary (tflite-benchmark-model); {self.name!r} runs in the agent")
        return self


class Emulation(Strict):
    """How the emulated fleet stands in for this board: a Debian userland of the board's CPU architecture,
    run under qemu-user. What it cannot reproduce is said here, and every result carries it."""

    debian_arch: Literal["armhf", "arm64", "amd64"] = Field(description="Debian architecture of the userland.")
    suite: str = Field("bookworm", pattern=r"^[a-z]+$", description="Debian suite debootstrap installs.")
    packages: tuple[str, ...] = Field(("python3", "python3-venv"),
                                      description="What the board's OS image ships (debootstrap --include).")
    os: str = Field(description="The emulated OS, in words.")
    differs: str = Field(description="What the emulated board does not reproduce (speed, accelerators, OS).")
    runtime_standin: tuple[str, ...] = Field(
        (), description="For runtimes the board's vendor installs (apt, JetPack): PyPI wheels installed into the "
                        "emulated userland in their place, named in every result.")
    standin_platform: tuple[str, ...] = Field(
        (), description="Wheel platform tags for runtime_standin (one, or a list: pip takes no older manylinux "
                        "tag for a newer one by itself).")
    standin_deps: bool = Field(False, description="Install the stand-ins' own dependencies too (a full "
                                                  "TensorFlow needs them); otherwise the OS provides them.")

    @field_validator("standin_platform", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("packages", "runtime_standin")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not name or name.startswith("-") or any(ch.isspace() for ch in name):
                raise ValueError(f"{name!r} is not a package name")
            no_hidden_characters(name)
        return value

    @model_validator(mode="after")
    def _standin_needs_platform(self) -> Emulation:
        if self.runtime_standin and not self.standin_platform:
            raise ValueError("emulation.standin_platform is required with runtime_standin")
        return self


class TfliteFormat(Strict):
    quantizations: tuple[TfliteQuantization, ...] = Field(min_length=1)


class OnnxFormat(Strict):
    opset: int = Field(13, ge=9, le=21)


class OpenvinoFormat(Strict):
    precisions: tuple[OpenvinoPrecision, ...] = ("fp32",)


class SavedModelFormat(Strict):
    pass


class TftrtConverter(Strict):
    precision_mode: Literal["FP16", "FP32"] = "FP16"
    max_batch_size: int = Field(1, ge=1)
    is_dynamic_op: bool = False
    max_workspace_size_bytes: int = Field(1 << 25, ge=1 << 20)
    minimum_segment_size: int = Field(50, ge=1)


class TftrtFormat(Strict):
    jetpack_tf_version: PlainText = Field(description="TensorFlow version of the target's JetPack (frozen graph must match).")
    relu6_replace: tuple[bool, ...] = Field((True, False), min_length=1,
                                            description="Build with and/or without Relu6 -> relu(x)-relu(x-6).")
    nms_on_cpu: tuple[bool, ...] = Field((True, False), min_length=1,
                                         description="Build with and/or without NonMaxSuppression pinned to the CPU.")
    remove_asserts: bool = True
    converter: TftrtConverter = TftrtConverter()


class EdgetpuCompiler(Strict):
    search_delegate: bool = False
    min_runtime_version: int | None = Field(None, ge=10)
    num_segments: int | None = Field(None, ge=1)


class EdgetpuFormat(Strict):
    compiler: EdgetpuCompiler = EdgetpuCompiler()


class AndroidAar(Strict):
    fat_apk_cpu: tuple[Literal["arm64-v8a", "armeabi-v7a", "x86", "x86_64"], ...] = ("arm64-v8a",)


class Formats(Strict):
    tflite: TfliteFormat | None = None
    onnx: OnnxFormat | None = None
    openvino: OpenvinoFormat | None = None
    savedmodel: SavedModelFormat | None = None
    tftrt: TftrtFormat | None = None
    edgetpu: EdgetpuFormat | None = None
    android_aar: AndroidAar | None = Field(None, description="Also build the TFLite GPU-delegate AAR with Bazel.")

    @model_validator(mode="after")
    def _not_empty(self) -> Formats:
        if not any(getattr(self, name) is not None for name in type(self).model_fields):
            raise ValueError("formats: list at least one format")
        return self


class Bench(Strict):
    threads: tuple[int, ...] = Field((1,), min_length=1)
    delegates: tuple[str, ...] = Field(("cpu",), description="Delegates to time; each runtime's are in "
                                                              "edgefleet/runtimes/.")
    warmup_runs: int = Field(5, ge=0)
    min_runs: int = Field(50, ge=1)
    min_duration_s: float = Field(2.0, ge=0)
    max_runs: int = Field(10_000, ge=1)
    cooldown_s: float = Field(1.0, ge=0)
    cv_threshold: float = Field(0.15, gt=0)
    warmup_max_runs: int | None = Field(None, ge=0, description="Cap of the adaptive warm-up, which goes on past "
                                                                "warmup_runs until the latency stops trending; "
                                                                "default max(10 * warmup_runs, 200).")
    max_temp_c: float | None = Field(None, gt=0, le=150, description="Temperature (°C, any thermal zone, during "
                                                                     "timing) above which a cell is flagged hot; "
                                                                     "also the cooldown's target. None: no limit.")

    @field_validator("delegates")
    @classmethod
    def _known_delegates(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        known = delegate_names()
        for name in value:
            if name not in known:
                raise ValueError(f"unknown delegate {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}")
        return value

    @field_validator("threads")
    @classmethod
    def _positive_unique(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(t < 1 for t in value):
            raise ValueError("thread counts must be >= 1")
        if len(set(value)) != len(value):
            raise ValueError("thread counts must be unique")
        return value

    @model_validator(mode="after")
    def _runs_order(self) -> Bench:
        if self.max_runs < self.min_runs:
            raise ValueError(f"max_runs ({self.max_runs}) is below min_runs ({self.min_runs})")
        if self.warmup_max_runs is not None and self.warmup_max_runs < self.warmup_runs:
            raise ValueError(f"warmup_max_runs ({self.warmup_max_runs}) is below warmup_runs ({self.warmup_runs})")
        return self


class FidelityThreshold(Strict):
    min_cosine: float | None = Field(None, ge=-1, le=1)
    max_rel_error: float | None = Field(None, ge=0)
    min_top1_agreement: float | None = Field(None, ge=0, le=1)


class AccuracyGate(Strict):
    max_map_drop: float = Field(2.0, ge=0, description="mAP points a variant may lose against fp32.")
    max_top1_drop: float = Field(0.02, ge=0)
    max_agreement_drop: float = Field(0.1, ge=0, le=1, description="Agreement with fp32 a variant may lose "
                                      "(a fraction: 0.1 asks for agreement >= 0.9 where fp32 agrees fully).")


class Profile(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    device: Device
    runtime: Runtime
    formats: Formats
    bench: Bench = Bench()
    transport: Connection = Field(LocalConnection(), description="How edgefleet reaches the device.")
    workdir: PlainText = Field(description="Absolute directory on the device that edgefleet owns.")
    fidelity: dict[Precision, FidelityThreshold] = Field(
        default_factory=dict, description="Per-precision overrides of the fidelity gate thresholds.")
    accuracy_gate: AccuracyGate = AccuracyGate()
    emulation: Emulation | None = Field(None, description="How `invoke fleet.up` emulates this board.")
    lab: Lab | None = Field(None, description="The shared lab the board lives in: deploy and collect reserve its "
                                              "labgrid place and reach the board at the place's NetworkService.")

    @field_validator("lab")
    @classmethod
    def _lab_board_over_ssh(cls, value: Lab | None, info: ValidationInfo) -> Lab | None:
        # The place's NetworkService says where the board answers SSH, and only the agent's deploy path
        # takes the place first (a device binary's path, for adb, does not).
        transport, runtime = info.data.get("transport"), info.data.get("runtime")
        if value is not None and transport is not None and transport.kind not in ("ssh", "local"):
            raise ValueError(f"a board in a labgrid place is reached over SSH at the place's NetworkService; "
                             f"leave transport out or make it kind: ssh (for its key options), not {transport.kind}")
        if value is not None and runtime is not None and not runtime_for_profile(runtime.name).agent:
            raise ValueError(f"runtime {runtime.name!r} is measured by a device binary, whose deploy does not take "
                             "a labgrid place; only runtimes that run in the edgefleet agent can use lab:")
        return value

    @field_validator("workdir")
    @classmethod
    def _safe_workdir(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("workdir must be an absolute path")
        parts = value.split("/")
        if ".." in parts or any(ch in value for ch in "\n\r\0"):
            raise ValueError("workdir may not contain '..' or control characters")
        if value.rstrip("/") in ("", "/bin", "/etc", "/usr", "/home", "/root", "/tmp", "/var"):
            raise ValueError(f"workdir {value!r} is too broad: edgefleet owns and may clean it")
        return value.rstrip("/")
