"""The op registry of the TensorFlow a device runs, read from that release's own wheel, and the check
that a frozen graph uses nothing outside it.

A Jetson on JetPack 4 imports frozen graphs with TF 1.15; this host freezes them with TF 2.x, which
knows ops and attributes 1.15 never had. The registry is what a TF release's generated op modules
(``gen_*_ops.py``) embed: a serialized ``OpList`` per module, read with ``ast.literal_eval`` so nothing
from the wheel runs. It is fetched once per version on the host, at planning time, and written as a
JSON file that the freeze and rewrite steps take as an input: steps stay pure and work offline.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from edgefleet.digest import sha256_file
from edgefleet.errors import BuildError, PlanError, ToolUnavailableError
from edgefleet.filelock import exclusive

if TYPE_CHECKING:
    from tensorflow.core.framework.graph_pb2 import GraphDef

Log = Callable[[str], None]
CACHE_ENV = "EDGEFLEET_TF_OPREGISTRY_CACHE"  # one cache for several workspaces (the test suite sets it)
CACHE_DIR = "tf-opregistry"                  # under the workspace's downloads folder otherwise
FORMAT = 1
LOCK_TIMEOUT_S = 900.0
# The wheel only has to be readable, not installable here: any CPython/manylinux build of the release
# carries the same generated op modules. (TF 1.15.5 has cp36-cp38 wheels; 3.7 is in the middle.)
WHEEL_PYTHON = "3.7"
WHEEL_PLATFORM = "manylinux2010_x86_64"
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_GEN_MODULE_RE = re.compile(r"(?:^|/)(tensorflow(?:_core)?/.*/gen_\w+\.py)$")
_INIT_CALL = "_InitOpDefLibrary("
_GRAPH_DEF_RE = re.compile(r"#define\s+(TF_GRAPH_DEF_VERSION(?:_MIN_PRODUCER|_MIN_CONSUMER)?)\s+(\d+)")
# Ops a stock wheel does not declare in Python but a device may still run: runtime-internal ops
# ("_Arg", "_FusedConv2D"; TF adds them itself) and NVIDIA's TensorRT op (JetPack's wheel registers it).
KNOWN_UNDECLARED = frozenset({"TRTEngineOp"})
_PIP_NETWORK_ARGS = ("--retries", "1", "--timeout", "20")
_OFFLINE_MARKERS = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name "
                    "resolution", "Network is unreachable", "ConnectTimeout", "ProxyError", "Connection refused",
                    "Max retries exceeded", "Name or service not known")


# --- the registry file ------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttrSpec:
    type: str                          # "type", "list(int)", "string"...
    allowed: frozenset[str] | None     # for type/string attrs with an allowed_values list


@dataclass(frozen=True)
class OpSpec:
    attrs: Mapping[str, AttrSpec]
    deprecated_at: int | None          # GraphDef version from which the release refuses the op
    module: str                        # the generated module that declares it, for the record

    @property
    def contrib_only(self) -> bool:
        # tf.contrib loads its ops from its own .so files when a contrib module is imported; the device
        # script imports none, so such an op is as missing as one the release never had.
        return "/contrib/" in self.module


@dataclass(frozen=True)
class OpRegistry:
    tensorflow_version: str
    graph_def_version: int             # TF_GRAPH_DEF_VERSION: the "consumer" version the release checks
    graph_def_min_producer: int
    ops: Mapping[str, OpSpec]
    source: Mapping[str, Any]          # wheel, sha256, pip command

    def spec(self, op: str) -> OpSpec | None:
        return self.ops.get(op)


def pip_command(version: str) -> list[str]:
    """The pip arguments that fetch the release's wheel (no install, no dependencies)."""
    return ["pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", WHEEL_PYTHON,
            "--platform", WHEEL_PLATFORM, f"tensorflow=={version}"]


def read_wheel(wheel: Path, version: str) -> dict[str, Any]:
    """The registry document (what the JSON file holds) of a TensorFlow wheel."""
    from tensorflow.core.framework import op_def_pb2

    ops: dict[str, Any] = {}
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = sorted(n for n in zf.namelist() if _GEN_MODULE_RE.search(n))
            for name in names:
                module = _GEN_MODULE_RE.search(name).group(1)  # type: ignore[union-attr]
                op_list = op_def_pb2.OpList()
                op_list.ParseFromString(_embedded_op_list(zf.read(name).decode("utf-8"), name))
                for op in op_list.op:
                    ops.setdefault(op.name, _op_entry(op, module))
            versions = _graph_def_versions(zf)
    except (OSError, zipfile.BadZipFile) as exc:
        raise BuildError(f"cannot read the TensorFlow wheel {wheel.name}: {exc}") from None
    if not ops:
        raise BuildError(f"{wheel.name} has no generated op modules (gen_*.py): not a TensorFlow wheel?")
    return {"format": FORMAT, "tensorflow_version": version, **versions, "modules": len(names),
            "source": {"wheel": wheel.name, "sha256": sha256_file(wheel), "command": " ".join(pip_command(version))},
            "ops": dict(sorted(ops.items()))}


def _embedded_op_list(source: str, name: str) -> bytes:
    # The module ends with _op_def_lib = _InitOpDefLibrary(b"..."): a bytes literal, read without running it.
    start = source.rfind(_INIT_CALL)
    end = source.rfind(")")
    if start < 0 or end < start:
        raise BuildError(f"{name} does not end with {_INIT_CALL}b\"...\"): an op module of an unknown layout")
    literal = ast.literal_eval(source[start + len(_INIT_CALL):end])
    if not isinstance(literal, bytes):
        raise BuildError(f"{name}: {_INIT_CALL}...) holds no bytes literal")
    return literal


def _op_entry(op: Any, module: str) -> dict[str, Any]:
    from tensorflow.core.framework import types_pb2

    attrs = {}
    for attr in op.attr:
        entry: dict[str, Any] = {"type": attr.type}
        allowed = attr.allowed_values.list
        if allowed.type:
            entry["allowed"] = sorted(types_pb2.DataType.Name(t) for t in allowed.type)
        elif allowed.s:
            entry["allowed"] = sorted(s.decode("utf-8", "replace") for s in allowed.s)
        attrs[attr.name] = entry
    deprecated = op.deprecation.version if op.HasField("deprecation") else None
    return {"attrs": attrs, "deprecated_at": deprecated, "module": module}


def _graph_def_versions(zf: zipfile.ZipFile) -> dict[str, int]:
    # The numbers live in the C++ library; the wheel's bundled header spells them out.
    header = next((n for n in zf.namelist() if n.endswith("tensorflow/core/public/version.h")), None)
    found = dict(_GRAPH_DEF_RE.findall(zf.read(header).decode("utf-8"))) if header else {}
    if "TF_GRAPH_DEF_VERSION" not in found:
        raise BuildError("the wheel has no tensorflow/core/public/version.h with TF_GRAPH_DEF_VERSION")
    return {"graph_def_version": int(found["TF_GRAPH_DEF_VERSION"]),
            "graph_def_min_producer": int(found.get("TF_GRAPH_DEF_VERSION_MIN_PRODUCER", 0))}


def load_registry(path: Path) -> OpRegistry:
    """Read a registry file written by ensure_registry; BuildError names the file when it is not one."""
    try:
        doc = _RegistryDoc.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise BuildError(f"cannot read the TF op registry {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise BuildError(f"{path} is not a TF op registry file ({str(exc).splitlines()[0]}); delete it and "
                         "plan again to fetch it anew") from None
    ops = {name: OpSpec({a: AttrSpec(s.type, frozenset(s.allowed) if s.allowed is not None else None)
                         for a, s in op.attrs.items()}, op.deprecated_at, op.module)
           for name, op in doc.ops.items()}
    return OpRegistry(doc.tensorflow_version, doc.graph_def_version, doc.graph_def_min_producer, ops,
                      doc.source.model_dump())


class _AttrDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str
    allowed: list[str] | None = None


class _OpDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    attrs: dict[str, _AttrDoc]
    deprecated_at: int | None
    module: str


class _SourceDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    wheel: str
    sha256: str
    command: str


class _RegistryDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    format: int = Field(ge=FORMAT, le=FORMAT)
    tensorflow_version: str
    graph_def_version: int
    graph_def_min_producer: int
    modules: int
    source: _SourceDoc
    ops: dict[str, _OpDoc] = Field(min_length=1)


# --- fetching and caching ---------------------------------------------------------------------------

def registry_path(cache_root: Path, version: str) -> Path:
    return cache_root / f"tensorflow-{version}.json"


def ensure_registry(cache_root: Path, version: str, log: Log, *,
                    lock_timeout_s: float = LOCK_TIMEOUT_S) -> Path:
    """The cached registry file of TensorFlow ``version``, fetched from PyPI now if missing."""
    if not _VERSION_RE.match(version):
        raise PlanError(f"jetpack_tf_version {version!r} is not a TensorFlow release number like \"1.15.5\"")
    path = registry_path(cache_root, version)
    if _complete(path):
        return path
    cache_root.mkdir(parents=True, exist_ok=True)
    lock = path.with_suffix(".lock")
    with exclusive(lock, lock_timeout_s, log=log,
                   waiting=f"waiting for another planner fetching the TensorFlow {version} op registry",
                   gave_up=lambda: PlanError(f"gave up after {lock_timeout_s:g} s waiting for the TensorFlow "
                                             f"{version} op registry (lock {lock} is still held)")):
        if not _complete(path):  # another planner may have fetched it while this one waited
            _discard_staging(path)
            _fetch(path, version, log)
    return path


def _complete(path: Path) -> bool:
    # Files appear by rename only, so one that parses is whole; a damaged one is fetched again.
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _discard_staging(path: Path) -> None:
    """Temp folders of killed fetches (only called under the lock, so none is in use)."""
    for leftover in path.parent.glob(f".{path.stem}-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _fetch(path: Path, version: str, log: Log) -> None:
    log(f"fetching the TensorFlow {version} op registry from PyPI (its wheel, ~110 MB, once; kept in {path.parent})")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f".{path.stem}-", dir=path.parent) as tmp:
        wheel = _download(Path(tmp), version)
        document = read_wheel(wheel, version)
        staged = Path(tmp) / path.name
        staged.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
        os.replace(staged, path)
    log(f"TensorFlow {version} op registry: {len(document['ops'])} ops from {document['modules']} op modules "
        f"of {document['source']['wheel']} ({time.monotonic() - started:.1f} s)")


def _download(dest: Path, version: str) -> Path:
    import subprocess

    command = [sys.executable, "-m", *pip_command(version), "--disable-pip-version-check", "--no-input",
               *_PIP_NETWORK_ARGS, "-d", str(dest)]
    proc = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False)
    wheels = sorted(dest.glob("tensorflow-*.whl"))
    if proc.returncode == 0 and wheels:
        return wheels[0]
    lines = (proc.stdout + proc.stderr).splitlines()
    shown = " ".join(pip_command(version))
    if any(marker in line for line in lines for marker in _OFFLINE_MARKERS):
        raise ToolUnavailableError(
            f"checking frozen graphs for TensorFlow {version} needs its op registry, read from its wheel on "
            f"PyPI, and PyPI is not reachable from this machine. Plan once where it is (or run `{shown}` there "
            f"and copy the wheel over): the registry is then cached for offline builds",
            command=command, returncode=proc.returncode, log=lines)
    offered = next((m.group(1) for line in lines if (m := re.search(r"\(from versions: ([^)]*)\)", line))), None)
    raise PlanError(f"jetpack_tf_version {version!r}: PyPI has no TensorFlow {version} wheel (`{shown}` found "
                    f"none{'; it offers ' + offered if offered else ''}), so edgefleet cannot read that release's "
                    "op registry; pin a released TensorFlow version")


# --- checking a graph -------------------------------------------------------------------------------

class TargetCheck(BaseModel):
    """What the check against the device's op registry found; ``problems`` make the graph invalid."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tensorflow_version: str
    registry_wheel: str
    registry_sha256: str
    consumer_graph_def_version: int    # TF_GRAPH_DEF_VERSION of the device's release
    producer_graph_def_version: int    # versions.producer of the graph (the host TF's)
    stripped_attrs: dict[str, int] = Field(default_factory=dict)   # "Op.attr" -> nodes it was dropped from
    unknown_ops: list[str] = Field(default_factory=list)           # internal/vendor ops, not checkable
    problems: list[str] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def warnings(self) -> list[str]:
        if not self.unknown_ops:
            return []
        return [f"ops {', '.join(self.unknown_ops)} are internal or vendor ops that TF {self.tensorflow_version}'s "
                "op modules do not declare: not checked"]


def fit_graph(graph_def: GraphDef, registry: OpRegistry) -> TargetCheck:
    """Drop attrs the device's TF does not know where the value is the default, then check the graph.

    Changes ``graph_def`` in place. TF gives a new attr a default that keeps the old behaviour, so an
    attr at its default means what the older release does without it; TF's own ``strip_default_attrs``
    relies on the same rule.
    """
    stripped = _strip_unknown_defaults(graph_def, registry)
    problems, unknown = _check(graph_def, registry)
    return TargetCheck(
        tensorflow_version=registry.tensorflow_version, registry_wheel=str(registry.source.get("wheel", "")),
        registry_sha256=str(registry.source.get("sha256", "")),
        consumer_graph_def_version=registry.graph_def_version,
        producer_graph_def_version=graph_def.versions.producer,
        stripped_attrs=stripped, unknown_ops=unknown, problems=problems)


def _all_nodes(graph_def: GraphDef) -> Iterator[Any]:
    yield from graph_def.node
    for function in graph_def.library.function:  # control-flow bodies the device imports too
        yield from function.node_def


def _strip_unknown_defaults(graph_def: GraphDef, registry: OpRegistry) -> dict[str, int]:
    from tensorflow.python.framework import op_def_registry

    stripped: dict[str, int] = {}
    for node in _all_nodes(graph_def):
        spec, host = registry.spec(node.op), op_def_registry.get(node.op)
        if spec is None or host is None:
            continue
        defaults = {a.name: a.default_value for a in host.attr if a.HasField("default_value")}
        for name in [n for n in node.attr if n not in spec.attrs and not n.startswith("_")]:
            if name in defaults and node.attr[name] == defaults[name]:
                del node.attr[name]
                stripped[f"{node.op}.{name}"] = stripped.get(f"{node.op}.{name}", 0) + 1
    return dict(sorted(stripped.items()))


def _check(graph_def: GraphDef, registry: OpRegistry) -> tuple[list[str], list[str]]:
    version = registry.tensorflow_version
    problems = _version_problems(graph_def, registry)
    found: dict[str, list[str]] = {}   # problem -> node names, so one message covers every node
    unknown: set[str] = set()
    functions = {f.signature.name for f in graph_def.library.function}
    producer = graph_def.versions.producer
    for node in _all_nodes(graph_def):
        spec = registry.spec(node.op)
        if spec is None:
            if node.op.startswith("_") or node.op in KNOWN_UNDECLARED:
                unknown.add(node.op)
            elif node.op not in functions:  # a call of a function from the graph's own library
                found.setdefault(f"op {node.op!r} does not exist in TF {version}", []).append(node.name)
            continue
        if spec.contrib_only:
            found.setdefault(f"op {node.op!r} exists in TF {version} only in tf.contrib ({spec.module}), whose "
                             "ops a plain import_graph_def does not register", []).append(node.name)
        if spec.deprecated_at is not None and producer >= spec.deprecated_at:
            found.setdefault(f"op {node.op!r} is removed in TF {version} from GraphDef version "
                             f"{spec.deprecated_at} (this graph's producer is {producer})", []).append(node.name)
        for name, value in node.attr.items():
            if name.startswith("_"):  # TF skips "_"-attrs when it validates a node: annotations, not inputs
                continue
            problem = _attr_problem(node.op, name, value, spec.attrs.get(name), version)
            if problem:
                found.setdefault(problem, []).append(node.name)
    problems += [f"{problem} ({_nodes(names)})" for problem, names in found.items()]
    return problems, sorted(unknown)


def _version_problems(graph_def: GraphDef, registry: OpRegistry) -> list[str]:
    # TF's CheckVersions: producer >= min producer, min_consumer <= consumer, consumer not a bad consumer.
    # A producer above the consumer is allowed: 1.15 imports a graph written by 2.x when the ops fit.
    versions, consumer = graph_def.versions, registry.graph_def_version
    problems = []
    if versions.producer < registry.graph_def_min_producer:
        problems.append(f"GraphDef producer {versions.producer} is below TF {registry.tensorflow_version}'s "
                        f"minimum {registry.graph_def_min_producer}")
    if versions.min_consumer > consumer:
        problems.append(f"GraphDef min_consumer {versions.min_consumer} is above TF {registry.tensorflow_version}'s "
                        f"GraphDef version {consumer}")
    if consumer in versions.bad_consumers:
        problems.append(f"GraphDef lists TF {registry.tensorflow_version}'s version {consumer} as a bad consumer")
    return problems


def _attr_problem(op: str, name: str, value: Any, spec: AttrSpec | None, version: str) -> str | None:
    if spec is None:
        return f"op {op!r} attr {name!r} = {_show(value)} is unknown to TF {version} and not at its default"
    if spec.allowed is None:
        return None
    used = _allowed_keys(value)
    bad = sorted(v for v in used if v not in spec.allowed)
    if bad:
        return (f"op {op!r} attr {name!r} = {', '.join(bad)} is not allowed in TF {version} "
                f"(allowed: {', '.join(sorted(spec.allowed))})")
    return None


def _allowed_keys(value: Any) -> list[str]:
    from tensorflow.core.framework import types_pb2

    kind = value.WhichOneof("value")
    if kind == "type":
        return [types_pb2.DataType.Name(value.type)]
    if kind == "s":
        return [value.s.decode("utf-8", "replace")]
    if kind == "list":
        return [types_pb2.DataType.Name(t) for t in value.list.type] + \
               [s.decode("utf-8", "replace") for s in value.list.s]
    return []


def _show(value: Any) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= 40 else text[:37] + "..."


def _nodes(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:2])
    return f"node {shown}" if len(names) == 1 else f"{len(names)} nodes, e.g. {shown}"

