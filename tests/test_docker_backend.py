"""The Docker backend and builder images, on the real engine (no registry: the base image is debootstrapped).

Cold (no images, no wheelhouse cache) this file makes the base image and the tf and
runtime images; warm it reuses all three. The step tests use the small runtime image and
real edgefleet steps (probe.env, android.aar); the tf test runs real conversions.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from docker_fixtures import SMALL_BUILDER, Timings, descendants_of, step_containers

from edgefleet.backends.base import StepRequest
from edgefleet.backends.docker import DockerBackend, step_hosts, unreachable_hosts
from edgefleet.errors import EXIT_TOOL_UNAVAILABLE, BuildError, ToolUnavailableError
from edgefleet.images.base_image import DEFAULT_BASE_IMAGE, MADE_BY, ensure_base_image
from edgefleet.images.build import IMAGE_PREFIX, ImageBuilder
from edgefleet.steps.process import STEP_MODULE

pytestmark = pytest.mark.docker
pytest_plugins = ["docker_fixtures"]

TAG_RE = re.compile(rf"^{re.escape(IMAGE_PREFIX)}[a-z0-9-]+:[0-9a-f]{{12}}$")
# A uid:gid nobody on the host runs as, so "owned by the invoking user" is a real remapping.
OTHER_USER = "10001:10001"


class CountingBuilds:
    """Pass-through wrapper of ``client.api.build`` that counts calls (the real build still runs)."""

    def __init__(self, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = client.api.build

        def build(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(client.api, "build", build)


@pytest.fixture(scope="module")
def small_image(docker_client: Any, base_image: str, workspace: Path, cache_root: Path, timings: Timings) -> str:
    started = time.monotonic()
    ensured = ImageBuilder(docker_client, workspace_root=workspace, cache_root=cache_root).ensure(
        SMALL_BUILDER, lambda line: None)
    timings.record(f"{SMALL_BUILDER}_image_{'build' if ensured.built else 'reuse'}", time.monotonic() - started)
    return ensured.tag


@pytest.fixture
def backend(docker_client: Any, small_image: str, workspace: Path, cache_root: Path) -> DockerBackend:
    return DockerBackend(workspace, client_factory=lambda: docker_client, env={}, cache_root=cache_root,
                         container_user=OTHER_USER)


def test_base_image_is_made_once_then_reused(docker_client: Any, base_image: str) -> None:
    first = docker_client.images.get(base_image)
    lines: list[str] = []
    assert ensure_base_image(docker_client, log=lines.append) == DEFAULT_BASE_IMAGE
    assert any("reusing" in line for line in lines), lines
    again = docker_client.images.get(base_image)
    assert again.id == first.id
    assert again.labels["org.edgefleet.made-by"] == MADE_BY
    assert again.labels["org.edgefleet.suite"] == "bookworm"


def test_unchanged_builder_reuses_its_image_without_building(docker_client: Any, small_image: str,
                                                             workspace: Path, cache_root: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert TAG_RE.match(small_image), small_image
    builds = CountingBuilds(docker_client, monkeypatch)
    # A fresh ImageBuilder is what a new edgefleet process has: nothing cached but the engine's images.
    ensured = ImageBuilder(docker_client, workspace_root=workspace, cache_root=cache_root).ensure(
        SMALL_BUILDER, lambda line: None)
    assert (ensured.tag, ensured.built, builds.calls) == (small_image, False, 0)
    image = docker_client.images.get(ensured.tag)
    assert image.labels["org.edgefleet.builder"] == SMALL_BUILDER


def test_changed_template_gets_a_new_tag_and_is_built(docker_client: Any, small_image: str, workspace: Path,
                                                      cache_root: Path, builders_copy: Callable[[str], Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    builder_dir = builders_copy(SMALL_BUILDER)
    template = builder_dir / "Dockerfile.j2"
    # A per-run comment: the image is new every run, yet every layer still comes from the cache.
    template.write_text(template.read_text() + f"# template probe {uuid.uuid4().hex}\n")
    builds = CountingBuilds(docker_client, monkeypatch)
    images = ImageBuilder(docker_client, workspace_root=workspace, builders_root=builder_dir.parent,
                          cache_root=cache_root)
    ensured = images.ensure(SMALL_BUILDER, lambda line: None)
    try:
        assert ensured.built and builds.calls == 1
        assert TAG_RE.match(ensured.tag) and ensured.tag != small_image
        assert ensured.tag in docker_client.images.get(ensured.tag).tags
        # Within a process the tag is computed once: asking again neither rehashes nor builds.
        assert images.ensure(SMALL_BUILDER, lambda line: None) is ensured and builds.calls == 1
    finally:
        docker_client.images.remove(ensured.tag, noprune=False)


def test_step_runs_in_a_container_and_its_outputs_belong_to_the_invoking_user(
        backend: DockerBackend, docker_client: Any, tmp_path: Path, timings: Timings) -> None:
    data = tmp_path / "inputs" / "data.bin"
    data.parent.mkdir()
    data.write_bytes(os.urandom(1000))
    out = tmp_path / "out"
    lines: list[str] = []
    started = time.monotonic()
    backend.run_step(StepRequest(kind="probe.env", builder=SMALL_BUILDER, inputs={"data": data},
                                 params={}, out_dir=out), lines.append)
    timings.record("step_container_overhead", time.monotonic() - started)

    env = json.loads((out / "env.json").read_text())
    result = json.loads((out / ".step-result.json").read_text())
    assert result["files"] == ["env.json"] and result["valid"] is True
    assert env["in_container"] is True and env["executable"] == "/opt/edgefleet/bin/python"
    assert (env["uid"], env["gid"]) == (10001, 10001)
    assert env["inputs"]["data"] == {"bytes": 1000, "writable": False,
                                     "sha256": hashlib.sha256(data.read_bytes()).hexdigest()}, \
        "inputs arrive whole and read-only"
    assert any("in container: True" in line for line in lines), "the container's log reaches the sink"
    for path in (out / "env.json", out / ".step-result.json"):
        assert (path.stat().st_uid, path.stat().st_gid) == (os.getuid(), os.getgid())
    assert step_containers(docker_client, backend.session) == []


def test_failing_step_raises_build_error_with_the_log_tail_and_leaves_no_container(
        backend: DockerBackend, docker_client: Any, tmp_path: Path) -> None:
    with pytest.raises(BuildError) as caught:
        backend.run_step(StepRequest(kind="probe.env", builder=SMALL_BUILDER, inputs={},
                                     params={"convert": "yes please"}, out_dir=tmp_path / "out"), lambda line: None)
    err = caught.value
    assert not isinstance(err, ToolUnavailableError)
    # The step process exits with the error's own code (edgefleet/errors.py); the backend reads it back.
    assert err.returncode == BuildError.exit_code and STEP_MODULE in err.command
    assert 0 < len(err.log_tail) <= BuildError.tail_lines
    assert "params.convert must be true or false" in err.log_tail[-1]
    assert "params.convert must be true or false" in str(err).splitlines()[0]
    assert step_containers(docker_client, backend.session) == []


def test_step_missing_its_tools_is_reported_unavailable(backend: DockerBackend, tmp_path: Path) -> None:
    # android.aar in the runtime image: no Bazel, SDK, NDK or TF source, and no network; it must say so fast.
    started = time.monotonic()
    with pytest.raises(ToolUnavailableError) as caught:
        backend.run_step(StepRequest(kind="android.aar", builder=SMALL_BUILDER, inputs={}, params={},
                                     out_dir=tmp_path / "out"), lambda line: None)
    message = str(caught.value)
    offline = unreachable_hosts(step_hosts("android.aar", {}))
    # Offline, no container runs at all (no step exit code); online, the step exits "unavailable".
    assert caught.value.returncode == (None if offline else EXIT_TOOL_UNAVAILABLE)
    # Without the hosts Bazel downloads from, the backend says so before starting a container; with them,
    # the step itself lists the tools the image lacks.
    needed = [f"network access to {', '.join(offline)}"] if offline else [
        "Bazel", "Android SDK", "NDK r21e", "TensorFlow source"]
    for what in needed:
        assert what in message
    assert time.monotonic() - started < 60


def test_keep_container_leaves_the_container_for_debugging(docker_client: Any, small_image: str, workspace: Path,
                                                           cache_root: Path, tmp_path: Path) -> None:
    kept = DockerBackend(workspace, client_factory=lambda: docker_client, env={"EDGEFLEET_KEEP_CONTAINER": "1"},
                         cache_root=cache_root)
    try:
        with pytest.raises(BuildError):
            kept.run_step(StepRequest(kind="probe.env", builder=SMALL_BUILDER, inputs={},
                                      params={"convert": 1}, out_dir=tmp_path / "out"), lambda line: None)
        left = step_containers(docker_client, kept.session)
        assert len(left) == 1 and left[0].attrs["State"]["ExitCode"] == BuildError.exit_code
    finally:
        for container in step_containers(docker_client, kept.session):
            container.remove(force=True)


def test_broken_image_build_raises_build_error_and_leaves_no_container(
        docker_client: Any, base_image: str, workspace: Path, cache_root: Path,
        builders_copy: Callable[[str], Path]) -> None:
    builder_dir = builders_copy(SMALL_BUILDER)
    template = builder_dir / "Dockerfile.j2"
    marker = uuid.uuid4().hex
    text = template.read_text().replace("WORKDIR /tmp\n", f"WORKDIR /tmp\nRUN echo broken-{marker} && exit 3\n", 1)
    template.write_text(text)
    before = descendants_of(docker_client, base_image)
    lines: list[str] = []
    with pytest.raises(BuildError) as caught:
        ImageBuilder(docker_client, workspace_root=workspace, builders_root=builder_dir.parent,
                     cache_root=cache_root).ensure(SMALL_BUILDER, lines.append)
    err = caught.value
    assert err.returncode == 3
    assert any(f"broken-{marker}" in line for line in err.log_tail)
    assert "returned a non-zero code: 3" in str(err)
    assert descendants_of(docker_client, base_image) - before == set(), "the failed RUN's container is gone"


@pytest.mark.slow
@pytest.mark.convert
def test_tf_image_runs_real_conversions(docker_client: Any, base_image: str, workspace: Path, cache_root: Path,
                                        tmp_path: Path, timings: Timings) -> None:
    from convert_fixtures import KERAS_SPEC, build_tiny_detector, conversion_params

    import numpy as np

    from edgefleet.datasets.shapes import generate

    started = time.monotonic()
    backend = DockerBackend(workspace, client_factory=lambda: docker_client, env={}, cache_root=cache_root)
    ensured = backend.images.ensure("tf", lambda line: None)
    timings.record(f"tf_image_{'build' if ensured.built else 'reuse'}", time.monotonic() - started)

    probe = tmp_path / "probe"
    backend.run_step(StepRequest(kind="probe.env", builder="tf", inputs={}, params={"convert": True},
                                 out_dir=probe), lambda line: None)
    env = json.loads((probe / "env.json").read_text())
    assert env["packages"]["tensorflow-cpu"] == "2.21.0" and env["python"].startswith("3.11.")
    assert env["conversion"]["max_abs_diff"] < 1e-5
    assert (probe / "probe.tflite").read_bytes()[4:8] == b"TFL3"

    model = build_tiny_detector(tmp_path / "tiny_detector.keras")
    images, _ = generate(16, seed=3)
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, images)
    out = tmp_path / "tflite"
    started = time.monotonic()
    backend.run_step(StepRequest(kind="tflite.convert", builder="tf",
                                 inputs={"model": model, "calibration": calibration},
                                 params=conversion_params(KERAS_SPEC, quantization="int8", fidelity_samples=4),
                                 out_dir=out), lambda line: None)
    timings.record("tflite_convert_step", time.monotonic() - started)
    result = json.loads((out / ".step-result.json").read_text())
    assert result["files"] == ["model_int8.tflite"] and result["valid"] is True, result["invalid_reasons"]
    assert (out / "model_int8.tflite").read_bytes()[4:8] == b"TFL3"
    assert result["tool_versions"]["tensorflow-cpu"] == "2.21.0"


def test_unreachable_engine_is_a_build_error(tmp_path: Path) -> None:
    from edgefleet.workspace import Settings, Workspace

    # The workspace's docker_host setting wins over the (here: unset) DOCKER_HOST.
    ws = Workspace(root=tmp_path, settings=Settings(backend="docker", docker_host="tcp://127.0.0.1:9"))
    backend = DockerBackend.for_workspace(ws, {})
    with pytest.raises(BuildError, match="cannot reach the Docker engine"):
        backend.run_step(StepRequest(kind="probe.env", builder=SMALL_BUILDER, inputs={}, params={},
                                     out_dir=tmp_path / "out"), lambda line: None)


def test_clean_images_keeps_the_newest_of_each_builder(docker_client: Any, base_image: str) -> None:
    import io

    from edgefleet.images.prune import builder_tags, prune_builder_images

    prefix = f"{IMAGE_PREFIX}prunetest{uuid.uuid4().hex[:6]}"
    tags = []
    for builder in ("a", "b"):
        for version in ("old", "new"):
            tag = f"{prefix}-{builder}:{version}"
            dockerfile = f"FROM {base_image}\nLABEL edgefleet.prunetest={builder}-{version}\n"
            docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
            tags.append(tag)
            time.sleep(1.1)  # creation times to the second are enough to order them
    in_use = docker_client.containers.create(f"{prefix}-b:old", command=["true"])
    try:
        lines: list[str] = []
        result = prune_builder_images(docker_client, prefix=prefix, log=lines.append)
        assert sorted(result.kept) == [f"{prefix}-a:new", f"{prefix}-b:new"]
        assert result.removed == [f"{prefix}-a:old"]
        assert lines == [f"+ docker rmi {prefix}-a:old", f"+ docker rmi {prefix}-b:old"]  # every attempt echoed
        assert [tag for tag, _ in result.failed] == [f"{prefix}-b:old"]  # a container still uses it
        assert "container" in result.failed[0][1]
        left = {tag for tags_ in builder_tags(docker_client, prefix).values() for _, tag in tags_}
        assert left == {f"{prefix}-a:new", f"{prefix}-b:new", f"{prefix}-b:old"}
    finally:
        in_use.remove(force=True)
        for tag in tags:
            try:
                docker_client.images.remove(tag)
            except Exception:  # noqa: BLE001  (already gone)
                pass


def test_clean_images_without_an_engine_says_how_to_reach_one(tmp_path: Path) -> None:
    from edgefleet.api.clean import CleanOptions, clean
    from edgefleet.api.context import Env
    from edgefleet.console import make_console

    (tmp_path / "edgefleet.yaml").write_text("backend: docker\ndocker_host: tcp://127.0.0.1:9\n")
    with pytest.raises(ToolUnavailableError, match="cannot reach the Docker engine at tcp://127.0.0.1:9.*docker_host"):
        clean(CleanOptions(images=True, workspace=tmp_path), Env(console=make_console(quiet=True), cwd=tmp_path))
