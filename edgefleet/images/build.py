"""Build (or reuse) ``edgefleet/builder-<name>:<digest12>`` through the docker SDK.

The tag's digest covers the rendered Dockerfile and every file of the build context
(wheelhouse and the edgefleet wheel included), so an unchanged builder is never rebuilt
and any change to its template, pins or edgefleet's own code gives a new tag.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from edgefleet.errors import BuildError, ConfigError
from edgefleet.images.base_image import DEFAULT_BASE_IMAGE, LABEL_PREFIX, ensure_base_image
from edgefleet.images.builder_spec import SPEC_FILE, TEMPLATE_FILE, BuilderSpec, VenvSpec, load_builder_spec, \
    pin_mismatches, read_constraints
from edgefleet.images.render import RenderInputs, VenvInputs, render_dockerfile
from edgefleet.images.wheelhouse import WheelhouseRequest, build_edgefleet_wheel, ensure_wheelhouse, \
    manylinux_platforms, marker_free, sha256_file, target_environment, wheel_requirements

if TYPE_CHECKING:
    import docker

Log = Callable[[str], None]
IMAGE_PREFIX = "edgefleet/builder-"
LABEL_BUILDER = f"{LABEL_PREFIX}.builder"
CONSTRAINTS = Path("requirements") / "constraints.txt"


@dataclass(frozen=True)
class ContextFile:
    arcname: str          # path inside the build context
    source: Path
    sha256: str


@dataclass(frozen=True)
class BuildContext:
    spec: BuilderSpec
    dockerfile: str
    files: tuple[ContextFile, ...]
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        h = hashlib.sha256()
        h.update(b"Dockerfile\0" + hashlib.sha256(self.dockerfile.encode()).hexdigest().encode() + b"\n")
        for f in sorted(self.files, key=lambda f: f.arcname):
            h.update(f.arcname.encode() + b"\0" + f.sha256.encode() + b"\n")
        object.__setattr__(self, "digest", h.hexdigest())

    @property
    def tag(self) -> str:
        return f"{IMAGE_PREFIX}{self.spec.name}:{self.digest[:12]}"

    def write_tar(self, fileobj: IO[bytes]) -> None:
        """The context as a tar with fixed metadata, so its bytes depend on content only."""
        with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as tar:
            data = self.dockerfile.encode()
            tar.addfile(_tarinfo("Dockerfile", len(data), 0o644), io.BytesIO(data))
            for f in sorted(self.files, key=lambda f: f.arcname):
                mode = 0o755 if f.source.stat().st_mode & 0o111 else 0o644
                with f.source.open("rb") as src:
                    tar.addfile(_tarinfo(f.arcname, f.source.stat().st_size, mode), src)


@dataclass(frozen=True)
class EnsuredImage:
    tag: str
    built: bool            # False: an image with this digest already existed
    spec: BuilderSpec


def prepare_context(builder_dir: Path, *, workspace_root: Path, cache_root: Path, log: Log,
                    constraints: Path | None = None) -> BuildContext:
    """Resolve everything the image needs (wheelhouses, edgefleet wheel) and render its Dockerfile."""
    spec = load_builder_spec(builder_dir)
    constraints = constraints or workspace_root / CONSTRAINTS
    constraints_text = constraints.read_text() if constraints.is_file() else None
    if constraints_text is not None:
        problems = pin_mismatches(spec, read_constraints(constraints))
        if problems:
            raise ConfigError(f"{builder_dir / SPEC_FILE}: pins disagree with {CONSTRAINTS}: " + "; ".join(problems))
    wheel = build_edgefleet_wheel(workspace_root, cache_root, log)
    files = [ContextFile(f"dist/{wheel.name}", wheel, sha256_file(wheel))]
    venvs = []
    for venv in spec.venvs:
        inputs, wheel_files = _venv_inputs(spec.name, venv, wheel, constraints_text, cache_root, log)
        venvs.append(inputs)
        files += wheel_files
    files += _extra_files(builder_dir)
    dockerfile = render_dockerfile(builder_dir, spec, RenderInputs(venvs=tuple(venvs),
                                                                   edgefleet_wheel=f"dist/{wheel.name}"))
    return BuildContext(spec=spec, dockerfile=dockerfile, files=tuple(files))


def _venv_inputs(builder: str, venv: VenvSpec, wheel: Path, constraints_text: str | None, cache_root: Path,
                 log: Log) -> tuple[VenvInputs, list[ContextFile]]:
    """The venv's wheelhouse (resolved once, then cached) and how the template installs it."""
    slug = venv.path.strip("/").replace("/", "-")
    requirements = list(venv.packages)
    if venv.edgefleet is not None:
        env = target_environment(venv.python_version, venv.arch)
        requirements += marker_free(wheel_requirements(wheel), extras=venv.edgefleet.extras, environment=env)
    wheelhouse = ensure_wheelhouse(WheelhouseRequest(
        builder=f"{builder}-{slug}", python_version=venv.python_version,
        platforms=tuple(manylinux_platforms(venv.arch, venv.glibc)),
        requirements=tuple(dict.fromkeys(requirements)), no_deps=venv.no_deps,
        constraints=constraints_text if venv.host_constraints else None,
    ), cache_root, log)
    # The wheelhouse's files are hashed once, when downloaded; a finished wheelhouse never changes.
    files = [ContextFile(f"wheelhouse/{slug}/{name}", wheelhouse.path / name, sha)
             for name, sha in wheelhouse.files.items()]
    inputs = VenvInputs(spec=venv, wheelhouse=f"wheelhouse/{slug}", requirements=wheelhouse.lock,
                        no_deps=wheelhouse.no_deps_lock)
    return inputs, files


def _extra_files(builder_dir: Path) -> list[ContextFile]:
    """Anything else in the builder directory (helper scripts...) goes into the context under files/."""
    files = []
    for path in sorted(builder_dir.rglob("*")):
        rel = path.relative_to(builder_dir)
        if path.is_file() and rel.as_posix() not in (SPEC_FILE, TEMPLATE_FILE) and "__pycache__" not in rel.parts:
            files.append(ContextFile(f"files/{rel.as_posix()}", path, sha256_file(path)))
    return files


class ImageBuilder:
    """Builder images for one workspace. Tags are computed once per builder and kept for the process."""

    def __init__(self, client: docker.DockerClient, *, workspace_root: Path,
                 builders_root: Path | None = None, cache_root: Path | None = None) -> None:
        self.client = client
        self.workspace_root = workspace_root
        self.builders_root = builders_root or workspace_root / "builders"
        self.cache_root = cache_root or workspace_root / ".edgefleet"
        self._contexts: dict[str, BuildContext] = {}
        self._ensured: dict[str, EnsuredImage] = {}

    def context(self, builder: str, log: Log) -> BuildContext:
        if builder not in self._contexts:
            builder_dir = self.builders_root / builder
            if not builder_dir.is_dir():
                known = sorted(p.name for p in self.builders_root.iterdir() if (p / SPEC_FILE).is_file()) \
                    if self.builders_root.is_dir() else []
                raise ConfigError(f"no builder {builder!r} in {self.builders_root}; known: {', '.join(known)}")
            self._contexts[builder] = prepare_context(builder_dir, workspace_root=self.workspace_root,
                                                      cache_root=self.cache_root, log=log)
        return self._contexts[builder]

    def ensure(self, builder: str, log: Log) -> EnsuredImage:
        """The builder's image tag, building the image first if the engine lacks it."""
        if builder in self._ensured:
            return self._ensured[builder]
        import docker.errors

        ctx = self.context(builder, log)
        try:
            self.client.images.get(ctx.tag)
        except docker.errors.ImageNotFound:
            self._ensure_base(ctx.spec, log)
            self._build(ctx, log)
            result = EnsuredImage(tag=ctx.tag, built=True, spec=ctx.spec)
        else:
            log(f"builder image {ctx.tag} is up to date")
            result = EnsuredImage(tag=ctx.tag, built=False, spec=ctx.spec)
        self._ensured[builder] = result
        return result

    def _ensure_base(self, spec: BuilderSpec, log: Log) -> None:
        import docker.errors

        if spec.base_image == DEFAULT_BASE_IMAGE:
            ensure_base_image(self.client, DEFAULT_BASE_IMAGE, log=log)
            return
        try:
            self.client.images.get(spec.base_image)
        except docker.errors.ImageNotFound:
            log(f"base image {spec.base_image} is not on the engine; the build will try to pull it")

    def _build(self, ctx: BuildContext, log: Log) -> None:
        import docker.errors

        kinds = ", ".join(ctx.spec.step_kinds) or "no registered step kinds"
        log(f"building {ctx.tag} for {kinds} ({len(ctx.files)} context files)")
        tail: deque[str] = deque(maxlen=BuildError.tail_lines)

        def emit(line: str) -> None:
            tail.append(line)
            log(line)

        command = f"docker build -t {ctx.tag} (builder {ctx.spec.name}, via the docker SDK)"
        with tempfile.TemporaryFile() as context_tar:
            ctx.write_tar(context_tar)
            context_tar.seek(0)
            try:
                stream = self.client.api.build(
                    # No labels= here: the engine appends one instruction per label, each paying a
                    # full filesystem diff on drivers without native diff. Templates carry labels.
                    fileobj=context_tar, custom_context=True, tag=ctx.tag,
                    rm=True, forcerm=True,      # no intermediate container survives, even a failed one
                    pull=False, decode=True,
                    network_mode=None if ctx.spec.needs_network else "none",
                )
                error = _follow_build(stream, emit)
            except docker.errors.APIError as exc:
                raise BuildError(f"building {ctx.tag} failed: {exc.explanation or exc}", command=command,
                                 log=list(tail)) from exc
        if error is not None:
            detail = error.get("errorDetail") or {}
            raise BuildError(f"building {ctx.tag} failed: {error.get('error', '').strip()}", command=command,
                             returncode=detail.get("code"), log=list(tail))


def _follow_build(stream: Iterable[dict[str, Any]], emit: Log) -> dict[str, Any] | None:
    """Send the build's output to ``emit`` line by line; return its error record, if any."""
    pending = ""
    error = None
    for record in stream:
        if "stream" in record:
            pending += record["stream"]
            *lines, pending = pending.split("\n")
            for line in lines:
                emit(line.rstrip("\r"))
        elif "status" in record:
            emit(str(record["status"]))
        elif "error" in record:
            error = record
    if pending:
        emit(pending)
    if error is not None:
        emit(str(error.get("error", "")).rstrip())
    return error


def _tarinfo(name: str, size: int, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info

