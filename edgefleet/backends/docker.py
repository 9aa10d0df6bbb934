"""Run build steps in builder containers, through the docker SDK only.

Per step: make sure the builder image exists (building it if needed), create a container
that runs ``python -m edgefleet.steps.process /spec/spec.json`` with its inputs copied in
read-only, stream its log, copy ``/out`` back with ``get_archive`` and remove the container.

The container runs as the invoking user's uid:gid, with no network unless the builder's steps need it;
networked steps get the host's CA bundle (PIP_CERT/REQUESTS_CA_BUNDLE/SSL_CERT_FILE), so a
TLS-inspecting proxy works inside as it does outside.

A builder whose image build or steps need the network is checked first: the hosts it declares
(URLs among its builder.yaml ``versions``; a step's module ``NETWORK_PROBES`` and URL params such as
``index_url``) are probed with a TCP connect, and when one is unreachable the step ends as "not built
here" (ToolUnavailableError naming them), not as a failed build.

Nothing is bind-mounted: the spec and the inputs go into the container with ``put_archive`` and the
outputs come back with ``get_archive``, so a remote engine (``docker_host: ssh://user@host``, see
backends/engines.py) runs a step exactly as the local one does, and the artifact store stays here.
"""
from __future__ import annotations

import importlib
import io
import json
import os
import re
import socket
import tarfile
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from edgefleet.backends.base import LogSink, StepRequest
from edgefleet.backends.engines import Engine, EnginePool, engine_errors
from edgefleet.errors import EXIT_TOOL_UNAVAILABLE, BuildError, ConfigError, ToolUnavailableError
from edgefleet.images.base_image import LABEL_PREFIX
from edgefleet.images.build import EnsuredImage, ImageBuilder
from edgefleet.images.builder_spec import SPEC_FILE, BuilderSpec, load_builder_spec
from edgefleet.steps.process import ERROR_FILE, RESULT_FILE, STEP_MODULE

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

    from edgefleet.workspace import Workspace

SPEC_DIR = PurePosixPath("/spec")
OUT_DIR = PurePosixPath("/out")
INPUTS_DIR = PurePosixPath("/inputs")
LABEL_SESSION = f"{LABEL_PREFIX}.session"
LABEL_KIND = f"{LABEL_PREFIX}.step-kind"
KEEP_ENV = "EDGEFLEET_KEEP_CONTAINER"
# Where the host says its trusted CAs are (a TLS-inspecting proxy's CA lives there); networked
# steps get the same bundle, or pip in the container rejects the proxy's certificates.
CA_BUNDLE_ENV = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
CONTAINER_CA_BUNDLE = SPEC_DIR / "ca-bundle.pem"
_INPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
PROBE_TIMEOUT_S = 3.0
_DEFAULT_PORTS = {"http": 80, "https": 443}


class StepContainer:
    """A step's container, removed on exit however the step ended (unless ``keep``)."""

    def __init__(self, client: docker.DockerClient, *, keep: bool, log: LogSink, **create_args: Any) -> None:
        self._client = client
        self._keep = keep
        self._log = log
        self._create_args = create_args
        self.container: Container | None = None

    def __enter__(self) -> Container:
        self.container = self._client.containers.create(**self._create_args)
        return self.container

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.container is None:
            return
        if self._keep:
            self._log(f"keeping container {self.container.name} ({self.container.short_id}) "
                      f"because {KEEP_ENV}=1; remove it yourself when done")
            return
        import docker.errors

        try:
            self.container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except engine_errors() as err:
            # The engine may be the reason the step is ending (a build host that went away): say so, and let
            # the step's own error through.
            self._log(f"warning: could not remove container {self.container.short_id}: {err}")


class DockerBackend:
    name = "docker"

    def __init__(self, workspace_root: Path, *, docker_hosts: Sequence[str] = (),
                 client_factory: Callable[[], docker.DockerClient] | None = None,
                 env: Mapping[str, str] | None = None, builders_root: Path | None = None,
                 cache_root: Path | None = None, container_user: str | None = None, jobs: int = 1) -> None:
        """``client_factory`` wins over ``docker_hosts``; with neither, DOCKER_HOST or the local socket.

        ``container_user`` ("uid:gid") defaults to the invoking user, so the outputs it writes map back to
        whoever runs edgefleet. Each engine runs at most ``jobs`` steps at once.
        """
        env = os.environ if env is None else env
        self.workspace_root = workspace_root
        self.keep_container = env.get(KEEP_ENV) == "1"
        self.ca_bundle = next((Path(env[k]) for k in CA_BUNDLE_ENV if env.get(k) and Path(env[k]).is_file()), None)
        self.container_user = container_user or f"{os.getuid()}:{os.getgid()}"
        if not re.fullmatch(r"\d+:\d+", self.container_user):
            raise ConfigError(f"container user must be numeric uid:gid, got {self.container_user!r}")
        # Every container this backend makes carries this label, so leftovers can be found.
        self.session = uuid.uuid4().hex[:12]
        factory = (lambda url: client_factory()) if client_factory else None
        self.pool = EnginePool(list(docker_hosts), jobs=jobs, env=env, factory=factory)
        self._builders_root = builders_root
        self._cache_root = cache_root

    @classmethod
    def for_workspace(cls, ws: Workspace, environ: Mapping[str, str]) -> DockerBackend:
        return cls(ws.root, docker_hosts=ws.settings.docker_hosts, env=environ, builders_root=ws.builders_dir,
                   cache_root=ws.state_dir, jobs=ws.settings.jobs)

    def set_jobs(self, jobs: int) -> int:
        self.pool.jobs = jobs
        return self.pool.capacity

    @property
    def images(self) -> ImageBuilder:
        """The image builder of the first answering engine."""
        with self.pool.engine(lambda line: None) as engine:
            return self._images(engine)

    def _images(self, engine: Engine) -> ImageBuilder:
        with engine.lock:
            if engine.images is None:
                assert engine.client is not None
                engine.images = ImageBuilder(engine.client, workspace_root=self.workspace_root,
                                             builders_root=self._builders_root, cache_root=self._cache_root)
            return engine.images

    def run_step(self, request: StepRequest, log: LogSink) -> None:
        spec = self._builder_spec(request.builder)
        if spec is not None and spec.step_network:
            _require_network(f"step {request.kind}", step_hosts(request.kind, request.params), log)
        network = f"step {request.kind}" if spec is not None and spec.step_network else None
        with self.pool.engine(log, network=network) as engine:
            where = "" if len(self.pool.engines) == 1 else f" on {engine.label}"
            try:
                image = self._ensure_image(engine, request.builder, spec, log)
                with engine.session() as client:
                    self._run_in(client, image, request, log, where)
            except engine_errors() as exc:
                if not _answers(engine):
                    self.pool.fail(engine, f"it stopped answering during step {request.kind}")
                raise BuildError(f"step {request.kind}: the Docker engine at {engine.label} failed: "
                                 f"{exc or type(exc).__name__}") from exc

    def _ensure_image(self, engine: Engine, builder: str, spec: BuilderSpec | None, log: LogSink) -> EnsuredImage:
        import docker.errors

        try:
            with engine.image_lock:
                return self._images(engine).ensure(builder, log)
        except docker.errors.DockerException as exc:
            raise BuildError(f"builder image {builder!r}: the Docker engine at {engine.label} failed: "
                             f"{exc}") from exc
        except ToolUnavailableError:
            raise
        except BuildError as exc:
            # A failed build of an image that needs the network: "not built here" when its hosts are unreachable.
            if spec is not None and spec.needs_network:
                _require_network(f"builder image {builder!r}", builder_hosts(spec), log, cause=exc)
            raise

    def _run_in(self, client: docker.DockerClient, image: EnsuredImage, request: StepRequest, log: LogSink,
                where: str) -> None:
        command = [image.spec.runner.python, "-m", STEP_MODULE, str(SPEC_DIR / "spec.json")]
        container_inputs = _container_inputs(request.inputs)
        spec = {"kind": request.kind, "inputs": container_inputs, "params": dict(request.params),
                "out_dir": str(OUT_DIR)}
        uid, gid = (int(part) for part in self.container_user.split(":"))
        environment = {"HOME": "/tmp", "PYTHONUNBUFFERED": "1"}
        ca_bundle = self.ca_bundle if image.spec.step_network else None
        if ca_bundle is not None:
            environment |= {name: str(CONTAINER_CA_BUNDLE) for name in CA_BUNDLE_ENV}
        started = time.monotonic()
        with StepContainer(
            client, keep=self.keep_container, log=log,
            image=image.tag, command=command, user=self.container_user,
            environment=environment, working_dir="/tmp", network_disabled=not image.spec.step_network,
            labels={LABEL_SESSION: self.session, LABEL_KIND: request.kind},
        ) as container:
            container.put_archive("/", _spec_archive(spec, uid=uid, gid=gid, ca_bundle=ca_bundle))
            with _inputs_archive(request.inputs) as inputs_tar:
                container.put_archive("/", inputs_tar)
            code, tail = _run(container, request.timeout_s, log)
            if code != 0:
                message = _step_error(container)
                if code == EXIT_TOOL_UNAVAILABLE:
                    raise ToolUnavailableError(message or f"step {request.kind} is unavailable in {image.tag}",
                                               command=command, returncode=code, log=tail)
                reason = f": {message.splitlines()[0]}" if message else ""
                raise BuildError(f"step {request.kind} failed in {image.tag}{where}{reason}", command=command,
                                 returncode=code, log=tail)
            _copy_out(container, request.out_dir)
        if not (request.out_dir / RESULT_FILE).is_file():
            raise BuildError(f"step {request.kind} exited 0 but wrote no {RESULT_FILE}", command=command)
        log(f"step {request.kind} done in {time.monotonic() - started:.1f} s ({image.tag}{where})")

    def _builder_spec(self, builder: str) -> BuilderSpec | None:
        """The builder's spec, read without the engine; None when there is no such builder (ensure says so)."""
        builder_dir = (self._builders_root or self.workspace_root / "builders") / builder
        return load_builder_spec(builder_dir) if (builder_dir / SPEC_FILE).is_file() else None


def _answers(engine: Engine) -> bool:
    try:
        return engine.client is not None and bool(engine.client.ping())
    except engine_errors():
        return False


def builder_hosts(spec: BuilderSpec) -> list[tuple[str, int]]:
    """The hosts a builder's image build downloads from, as its builder.yaml declares them (URL ``versions``)."""
    return _url_hosts(spec.versions.values())


def step_hosts(kind: str, params: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The hosts a networked step reaches: its module's ``NETWORK_PROBES`` and the URLs among its params."""
    from edgefleet.steps.registry import step_kind

    module = importlib.import_module(step_kind(kind).target.partition(":")[0])
    declared = [(str(host), int(port)) for host, port in getattr(module, "NETWORK_PROBES", ())]
    return list(dict.fromkeys([*declared, *_url_hosts(params.values())]))


def unreachable_hosts(hosts: list[tuple[str, int]], timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
    """``host:port`` of each host a TCP connection cannot reach from here."""
    missing = []
    for host, port in hosts:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                pass
        except OSError:
            missing.append(f"{host}:{port}")
    return missing


def _require_network(what: str, hosts: list[tuple[str, int]], log: LogSink,
                     cause: BaseException | None = None) -> None:
    missing = unreachable_hosts(hosts)
    if not missing:
        return
    message = (f"{what} is not built here: it needs network access to {', '.join(missing)}, which this machine "
               "cannot reach; build it where they are reachable")
    log(message)
    raise ToolUnavailableError(message) from cause


def _url_hosts(values: Any) -> list[tuple[str, int]]:
    hosts = []
    for value in values:
        if not isinstance(value, str):
            continue
        url = urlsplit(value)
        if url.scheme in _DEFAULT_PORTS and url.hostname:
            hosts.append((url.hostname, url.port or _DEFAULT_PORTS[url.scheme]))
    return list(dict.fromkeys(hosts))


def _container_inputs(inputs: Mapping[str, Path]) -> dict[str, str]:
    """Where each input appears in the container: /inputs/<name>/<its file name> (a symlinked artifact keeps
    the suffix the step was given)."""
    paths = {}
    for name, host_path in inputs.items():
        if not _INPUT_NAME.match(name):
            raise BuildError(f"input name {name!r} cannot be a container path component")
        if not host_path.exists():
            raise BuildError(f"input {name!r} does not exist: {host_path}")
        paths[name] = str(INPUTS_DIR / name / host_path.name)
    return paths


@contextmanager
def _inputs_archive(inputs: Mapping[str, Path]) -> Iterator[IO[bytes]]:
    """The inputs as one tar (spooled to disk: a SavedModel can be large), root-owned and read-only, so a
    step that runs as another user cannot change them; symlinks are followed, as a mount would."""
    def read_only(member: tarfile.TarInfo) -> tarfile.TarInfo:
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        member.mode = (member.mode | 0o444) & ~0o222
        if member.isdir():
            member.mode |= 0o555
        return member

    with tempfile.TemporaryFile() as buf:
        with tarfile.open(fileobj=buf, mode="w", dereference=True) as tar:
            for directory in sorted({INPUTS_DIR, *(INPUTS_DIR / name for name in inputs)}):
                info = tarfile.TarInfo(str(directory.relative_to("/")))
                info.type, info.mode = tarfile.DIRTYPE, 0o555
                tar.addfile(info)
            for name, host_path in inputs.items():
                arcname = (INPUTS_DIR / name / host_path.name).relative_to("/")
                tar.add(host_path.resolve(), arcname=str(arcname), filter=read_only)
        buf.seek(0)
        yield buf


def _spec_archive(spec: Mapping[str, Any], *, uid: int, gid: int, ca_bundle: Path | None = None) -> bytes:
    """/spec/spec.json (and the CA bundle, if any) plus an empty /out, owned by the user the step runs as."""
    now = int(time.time())
    files = {f"{SPEC_DIR.name}/spec.json": json.dumps(spec, indent=2, sort_keys=True).encode()}
    if ca_bundle is not None:
        files[f"{SPEC_DIR.name}/{CONTAINER_CA_BUNDLE.name}"] = ca_bundle.read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for directory in (SPEC_DIR, OUT_DIR):
            info = tarfile.TarInfo(directory.name)
            info.type, info.mode, info.uid, info.gid, info.mtime = tarfile.DIRTYPE, 0o755, uid, gid, now
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o644, uid, gid, now
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _run(container: Container, timeout_s: float, log: LogSink) -> tuple[int, list[str]]:
    """Start the container, stream its log line by line; return (exit code, last lines)."""
    tail: deque[str] = deque(maxlen=BuildError.tail_lines)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        try:
            container.kill()
        except Exception:  # noqa: BLE001 - it may have exited meanwhile; the wait below reports
            pass

    watchdog = threading.Timer(timeout_s, kill)
    container.start()
    watchdog.start()
    try:
        pending = b""
        for chunk in container.logs(stream=True, follow=True):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                tail.append(line)
                log(line)
        if pending:
            line = pending.decode("utf-8", "replace")
            tail.append(line)
            log(line)
        code = int(container.wait()["StatusCode"])
    finally:
        watchdog.cancel()
    if timed_out.is_set():
        raise BuildError(f"step timed out after {timeout_s:g} s (step_timeout_s in edgefleet.yaml); its container "
                         f"was killed", returncode=code, log=list(tail))
    return code, list(tail)


def _step_error(container: Container) -> str | None:
    """The message the step runner left in /out when the step failed, if any."""
    import docker.errors

    try:
        stream, _ = container.get_archive(str(OUT_DIR / ERROR_FILE))
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream)), mode="r:") as tar:
            member = tar.extractfile(ERROR_FILE)
            return str(json.loads(member.read())["message"]) if member else None
    except (docker.errors.NotFound, KeyError, ValueError, tarfile.TarError):
        return None


def _copy_out(container: Container, out_dir: Path) -> None:
    """Copy /out into ``out_dir``; the files belong to the invoking user, whatever the container used."""
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is None:
        raise BuildError("copying step outputs safely needs Python >= 3.10.12 (tarfile extraction filters)")
    uid, gid = os.getuid(), os.getgid()
    out_dir.mkdir(parents=True, exist_ok=True)
    stream, _ = container.get_archive(str(OUT_DIR))
    prefix = OUT_DIR.name + "/"

    def relocate(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        if not member.name.startswith(prefix):
            return None                       # the /out directory entry itself
        changes: dict[str, Any] = {"name": member.name[len(prefix):], "uid": uid, "gid": gid,
                                   "uname": "", "gname": ""}
        if member.islnk() and member.linkname.startswith(prefix):
            changes["linkname"] = member.linkname[len(prefix):]
        return data_filter(member.replace(**changes, deep=False), dest)

    with tempfile.TemporaryFile() as buf:
        for chunk in stream:
            buf.write(chunk)
        buf.seek(0)
        try:
            with tarfile.open(fileobj=buf, mode="r:") as tar:
                tar.extractall(out_dir, filter=relocate, numeric_owner=True)
        except tarfile.FilterError as exc:
            raise BuildError(f"the step wrote an output that points outside its output directory: {exc}") from None
