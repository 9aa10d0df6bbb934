"""Builds on another machine's Docker engine, for real: a second dockerd (own data root and socket) in a
network namespace with its own sshd, reached only through ``ssh://`` with the docker SDK, the way
``docker_host: ssh://user@buildhost`` reaches a real build host.

The build host's engine keeps its images in the repository's .edgefleet/ (as the main engine keeps its
own), so only the first run here makes its base and builder images. The test that pulls the plug on the
engine runs last.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker_fixtures import REPO, Timings, step_containers

from edgefleet.api.build import BuildOptions, build
from edgefleet.api.buildhost import BuildHostDownOptions, BuildHostUpOptions, down, up
from edgefleet.api.context import Env
from edgefleet.backends.base import StepRequest
from edgefleet.backends.docker import DockerBackend
from edgefleet.backends.engines import connect
from edgefleet.console import make_console
from edgefleet.errors import BuildError, ConfigError, ToolUnavailableError
from edgefleet.execute import BuildSummary, execute_plan
from edgefleet.fleet import buildhost
from edgefleet.fleet.buildhost import BuildHost
from edgefleet.plan.model import Plan, Step
from edgefleet.store import ArtifactStore
from edgefleet.workspace import open_workspace

pytestmark = pytest.mark.docker
pytest_plugins = ["docker_fixtures"]

ENGINE_CACHE = REPO / ".edgefleet" / "buildhost-engine"
LOCAL_ENGINE = "unix:///var/run/docker.sock"
# The build host's containers get no network (its namespace has no route out), so its steps come from a builder
# whose steps need none; the runtime builder's do (they download wheels).
BUILDER = "tf"
WORKSPACE_PARTS = ("edgefleet", "builders", "requirements", "targets", "models", "templates", "pyproject.toml",
                   "README.md", "edgefleet.yaml")


@pytest.fixture(scope="module")
def build_host(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[tuple[BuildHost, Path]]:
    """`buildhost.up --ssh-config` for a HOME of its own (its ~/.ssh/config and known_hosts), which the
    module then uses, as a user's shell would."""
    if os.geteuid() != 0:
        pytest.skip("an emulated build host needs root (network namespaces, a second dockerd)")
    ws = tmp_path_factory.mktemp("ws")
    (ws / "targets").mkdir()
    home = tmp_path_factory.mktemp("home")
    env = Env(console=make_console(quiet=True), environ={"HOME": str(home)})
    host = up(BuildHostUpOptions(name="bh", ssh_config=True, data_root=ENGINE_CACHE, workspace=ws), env)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        try:
            yield host, home
        finally:
            down(BuildHostDownOptions(name="bh", workspace=ws), env)
    from edgefleet.fleet.lifecycle import mounts_under
    from edgefleet.fleet.netns import list_namespaces
    from edgefleet.fleet.system import pids_matching

    assert host.namespace not in list_namespaces()
    assert mounts_under(ENGINE_CACHE, itself=True) == [], "down unmounts what the engine mounted"
    assert not pids_matching(str(host.socket)) | pids_matching(str(host.sshd_files.config)), "engine and sshd gone"
    assert host.alias not in (home / ".ssh" / "config").read_text(), "down takes its ~/.ssh/config entry away"


def engine_of(host: BuildHost) -> Any:
    """The build host's engine through its socket: only the tests look at it this way."""
    import docker

    return docker.DockerClient(base_url=f"unix://{host.socket}")


def copy_workspace(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in WORKSPACE_PARTS:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=ignore)
        else:
            shutil.copy2(source, dest / name)
    return dest


def test_a_step_runs_on_the_build_host_with_its_inputs_sent_over_ssh(
        build_host: tuple[BuildHost, Path], workspace: Path, cache_root: Path, tmp_path: Path,
        docker_client: Any, timings: Timings) -> None:
    host, _ = build_host
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(1000))
    saved_model = tmp_path / "saved_model"
    (saved_model / "variables").mkdir(parents=True)
    (saved_model / "saved_model.pb").write_bytes(os.urandom(300))
    (saved_model / "variables" / "variables.data").write_bytes(os.urandom(200))
    backend = DockerBackend(workspace, docker_hosts=[host.url], env={"EDGEFLEET_KEEP_CONTAINER": "1"},
                            cache_root=cache_root, container_user="10001:10001")
    started = time.monotonic()
    ensured = backend.images.ensure(BUILDER, lambda line: None)
    timings.record(f"buildhost_{BUILDER}_image_{'build' if ensured.built else 'reuse'}",
                   time.monotonic() - started)
    out, lines = tmp_path / "out", []
    backend.run_step(StepRequest(kind="probe.env", builder=BUILDER,
                                 inputs={"data": data, "saved_model": saved_model}, params={}, out_dir=out),
                     lines.append)

    env = json.loads((out / "env.json").read_text())
    assert env["in_container"] is True and (env["uid"], env["gid"]) == (10001, 10001)
    assert env["inputs"]["data"]["bytes"] == 1000 and env["inputs"]["data"]["writable"] is False
    assert env["inputs"]["saved_model"]["bytes"] == 500 and env["inputs"]["saved_model"]["writable"] is False
    import hashlib
    assert env["inputs"]["data"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert os.stat(out / "env.json").st_uid == os.getuid(), "outputs belong to the invoking user here"
    remote = engine_of(host)
    (kept,) = step_containers(remote, backend.session)
    assert kept.attrs["Mounts"] == [], "nothing is mounted from this machine: the inputs travelled in the archive"
    kept.remove(force=True)
    assert remote.images.get(ensured.tag), "the image was built on the build host's engine"
    assert step_containers(docker_client, backend.session) == [], "the local engine ran nothing"


def test_build_on_the_build_host_gives_the_local_docker_build_s_artifacts(
        build_host: tuple[BuildHost, Path], tmp_path: Path, timings: Timings) -> None:
    host, home = build_host
    env = Env(console=make_console(quiet=True), environ={**os.environ, "HOME": str(home)})

    def build_rpi3(where: str, *hosts: str) -> BuildSummary:
        ws = tmp_path / where
        if not ws.exists():
            copy_workspace(ws)
        started = time.monotonic()
        summary = build(BuildOptions(target="rpi3", backend="docker", docker_hosts=hosts, workspace=ws), env)
        assert isinstance(summary, BuildSummary)
        timings.record(f"rpi3_docker_build_{where}_{len(hosts)}", time.monotonic() - started)
        return summary

    local = build_rpi3("local")
    remote = build_rpi3("remote", host.url)
    converted = {o.step.id for o in remote.outcomes if o.step.kind == "tflite.convert"}
    assert converted and all(o.status == "built" for o in remote.outcomes if o.step.id in converted)
    local_files, remote_files = artifacts(local, tmp_path / "local"), artifacts(remote, tmp_path / "remote")
    for step in converted:
        # The TFLite converter is deterministic: the same bytes, wherever the engine runs.
        assert remote_files[step] == local_files[step], step
    # The runtime builder's steps download wheels; the build host's containers have no network.
    unbuilt = {o.step.id: o.message for o in remote.outcomes if o.status != "built"}
    assert unbuilt and all(o.step.builder == "runtime" for o in remote.outcomes if o.step.id in unbuilt)
    assert all("no engine gives its containers one" in why for why in unbuilt.values()), unbuilt

    # With this machine's engine listed too, the networked steps go there and the rest stay cached.
    both = build_rpi3("remote", host.url, LOCAL_ENGINE)
    assert {o.step.id for o in both.outcomes if o.status == "built"} == set(unbuilt)
    assert artifacts(both, tmp_path / "remote") == local_files


def artifacts(summary: BuildSummary, ws_root: Path) -> dict[str, dict[str, Any]]:
    """Per built step, its files: a model by its sha256, a JSON report by its content without its times."""
    store = ArtifactStore(open_workspace(ws_root).artifacts_dir)
    found: dict[str, dict[str, Any]] = {}
    for outcome in summary.outcomes:
        if outcome.status in ("built", "cached"):
            files = found.setdefault(outcome.step.id, {})
            for entry in store.manifest(outcome.step.key)["files"]:
                path = store.path(outcome.step.key) / entry["name"]
                files[entry["name"]] = untimed(json.loads(path.read_text())) if entry["name"].endswith(".json") \
                    else entry["sha256"]
    return found


WHEN = {"seconds", "created"}  # when a report was made and how long it took: not what was built


def untimed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k not in WHEN}
    return [untimed(v) for v in value] if isinstance(value, list) else value


def test_steps_spread_over_the_engines_that_answer_and_a_dead_one_is_skipped(
        build_host: tuple[BuildHost, Path], workspace: Path, cache_root: Path, tmp_path: Path) -> None:
    host, _ = build_host
    dead = "tcp://127.0.0.1:9"   # nothing listens there: refused at once
    backend = DockerBackend(workspace, docker_hosts=[dead, LOCAL_ENGINE, host.url], env={}, cache_root=cache_root,
                            jobs=1)
    assert backend.set_jobs(1) == 3
    logs: dict[int, list[str]] = {0: [], 1: []}
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            backend.run_step(StepRequest(kind="probe.env", builder=BUILDER, inputs={},
                                         params={"sleep_s": 3}, out_dir=tmp_path / f"out{n}"), logs[n].append)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in logs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert not errors, errors
    lines = logs[0] + logs[1]
    assert sum(f"skipping build host {dead}" in line for line in lines) == 1, "warned once"
    done = [line for line in lines if line.startswith("step probe.env done")]
    assert len(done) == 2
    assert {line.rsplit(" on ", 1)[1].rstrip(")") for line in done} == {LOCAL_ENGINE, host.url}, done


def test_an_unknown_host_key_is_refused_with_what_to_do(build_host: tuple[BuildHost, Path], tmp_path: Path) -> None:
    host, home = build_host
    stranger = tmp_path / "stranger"
    (stranger / ".ssh").mkdir(parents=True)
    shutil.copy(home / ".ssh" / "config", stranger / ".ssh" / "config")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(stranger))
        with pytest.raises(ToolUnavailableError, match=f"cannot reach the Docker engine at {host.url}.*known_hosts"):
            connect(host.url, {})


def test_a_build_host_that_dies_mid_step_fails_the_step_and_caches_nothing(
        build_host: tuple[BuildHost, Path], workspace: Path, cache_root: Path, tmp_path: Path) -> None:
    host, _ = build_host
    backend = DockerBackend(workspace, docker_hosts=[host.url], env={}, cache_root=cache_root)
    backend.images.ensure(BUILDER, lambda line: None)
    step = Step("probe/slow", "probe.env", BUILDER, {"sleep_s": 30}, {}, key=uuid.uuid4().hex * 2)
    store = ArtifactStore(tmp_path / "artifacts")
    remote = engine_of(host)

    def pull_the_plug() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not remote.containers.list(
                filters={"label": f"org.edgefleet.session={backend.session}", "status": "running"}):
            time.sleep(0.2)
        time.sleep(1)
        buildhost.kill_engine(host)

    killer = threading.Thread(target=pull_the_plug)
    killer.start()
    started = time.monotonic()
    summary = execute_plan(Plan("remote", "none", (step,)), store, backend, timeout_s=300)
    killer.join()
    (outcome,) = summary.outcomes
    assert outcome.status == "failed", outcome
    assert f"the Docker engine at {host.url} failed" in outcome.message
    assert time.monotonic() - started < 30, "the step failed when the engine went, not at its timeout"
    assert store.entries() == [], "nothing was cached"
    assert not store.root.exists() or not [p for p in store.root.iterdir() if p.name.startswith(".")]
    with pytest.raises(BuildError, match="no build host answered"):
        backend.run_step(StepRequest(kind="probe.env", builder=BUILDER, inputs={}, params={},
                                     out_dir=tmp_path / "after"), lambda line: None)


def test_docker_host_settings_are_checked_at_load(tmp_path: Path) -> None:
    (tmp_path / "targets").mkdir()
    (tmp_path / "edgefleet.yaml").write_text("backend: docker\ndocker_host:\n  - ssh://builder@big\n  - big:2375\n")
    with pytest.raises(ConfigError, match=r"edgefleet.yaml:4:\d+: docker_host.1: .big:2375. is not a Docker engine address"):
        open_workspace(tmp_path)
    (tmp_path / "edgefleet.yaml").write_text("docker_host: [ssh://builder@big, tcp://other:2375]\n")
    assert open_workspace(tmp_path).settings.docker_hosts == ("ssh://builder@big", "tcp://other:2375")
    with pytest.raises(ConfigError, match="--docker-host runs steps on Docker engines.*--backend docker"):
        build(BuildOptions(target="rpi3", backend="local", docker_hosts=("ssh://big",), workspace=tmp_path),
              Env(console=make_console(quiet=True)))


def test_ssh_config_entries_are_replaced_and_removed_without_touching_the_rest(tmp_path: Path) -> None:
    folder = tmp_path / "bh"
    folder.mkdir()
    (folder / "ssh_host_ed25519_key.pub").write_text("ssh-ed25519 AAAAkey comment\n")
    host = BuildHost(name="bh", folder=str(folder), namespace="ns", host_if="if", index=7, address="10.213.7.2",
                     data_root=str(tmp_path / "engine"))
    ssh = tmp_path / "home" / ".ssh"
    ssh.mkdir(parents=True)
    (ssh / "config").write_text("Host mine\n    User me\n")
    buildhost.install_ssh_config(host, tmp_path / "home")
    buildhost.install_ssh_config(host, tmp_path / "home")
    config = (ssh / "config").read_text()
    assert config.startswith("Host mine\n    User me\n") and config.count("Host edgefleet-bh") == 1
    assert (ssh / "known_hosts").read_text().count("10.213.7.2 ssh-ed25519 AAAAkey") == 1
    buildhost.remove_ssh_config("bh", tmp_path / "home")
    assert (ssh / "config").read_text() == "Host mine\n    User me\n"
    assert "10.213.7.2" not in (ssh / "known_hosts").read_text()


@pytest.mark.parametrize("name", ["Big Box", "-x", "a" * 21, "../up"])
def test_a_build_host_name_that_cannot_name_a_namespace_is_refused(name: str, tmp_path: Path) -> None:
    (tmp_path / "targets").mkdir()
    with pytest.raises(ConfigError, match="build host name"):
        up(BuildHostUpOptions(name=name, workspace=tmp_path), Env(console=make_console(quiet=True)))
