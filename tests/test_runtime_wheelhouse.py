"""runtime.wheelhouse against the real PyPI: wheels for the device's platform and Python, never the host's."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import parse_wheel_filename

from edgefleet.errors import BuildError
from edgefleet.steps.base import StepContext, StepResult
from edgefleet.steps.runtime import MANIFEST, runtime_wheelhouse

pytest_plugins = ["docker_fixtures"]

ARMV7L = ["manylinux_2_34_armv7l", "manylinux_2_31_armv7l", "linux_armv7l"]
X86_64 = ["manylinux_2_17_x86_64", "manylinux2014_x86_64"]


@pytest.fixture(scope="module", autouse=True)
def pypi_reachable() -> None:
    # Ask pip itself, so the check uses whatever index this machine's pip is configured for.
    try:
        subprocess.run([sys.executable, "-m", "pip", "index", "versions", "pip"], check=True,
                       capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs PyPI for the wheelhouse tests: {exc}")
        pytest.skip(f"PyPI unreachable: {exc}")


def run(out_dir: Path, params: dict[str, Any]) -> tuple[StepResult, dict[str, Any]]:
    ctx = StepContext(kind="runtime.wheelhouse", inputs={}, params=params, out_dir=out_dir, log=lambda line: None)
    result = runtime_wheelhouse(ctx)
    return result, json.loads((out_dir / MANIFEST).read_text())


def platforms_of(manifest: dict[str, Any], project: str) -> set[str]:
    entry = next(f for f in manifest["files"] if f["project"] == project)
    return {tag.split("-")[2] for tag in entry["tags"]}


def test_x86_64_wheelhouse_holds_the_packages_and_their_dependencies(tmp_path: Path) -> None:
    result, manifest = run(tmp_path, {"platforms": X86_64, "python_version": "3.11",
                                      "packages": ["tflite-runtime==2.14.0", "numpy<2"]})
    projects = {f["project"]: f["version"] for f in manifest["files"]}
    assert projects["tflite-runtime"] == "2.14.0"
    assert projects["numpy"].startswith("1.")
    assert platforms_of(manifest, "tflite-runtime") & set(X86_64)
    for entry in manifest["files"]:
        path = tmp_path / entry["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        assert path.stat().st_size == entry["size"]
        for tag in parse_wheel_filename(path.name)[3]:
            assert tag.interpreter in ("cp311", "py3", "py311") and tag.platform in (*X86_64, "any"), path.name
    assert manifest["unavailable"] == [] and manifest["unresolved_dependencies"] == []
    assert result.files[0] == MANIFEST and len(result.files) == len(manifest["files"]) + 1


def test_armv7l_wheelhouse_records_what_pypi_lacks(tmp_path: Path) -> None:
    # tflite-runtime 2.14 for armv7l needs glibc >= 2.34 and numpy<2, which has no armv7l
    # wheel on PyPI (a Raspberry Pi gets it from apt); optional, so it is recorded, not fatal.
    _, manifest = run(tmp_path, {"platforms": ARMV7L, "python_version": "3.11", "packages": [
        {"requirement": "tflite-runtime==2.14.0"},
        {"requirement": "numpy<2", "optional": True}]})
    assert [(f["project"], f["version"]) for f in manifest["files"]] == [("tflite-runtime", "2.14.0")]
    assert platforms_of(manifest, "tflite-runtime") == {"manylinux_2_34_armv7l"}
    assert manifest["files"][0]["tags"] == ["cp311-cp311-manylinux_2_34_armv7l"]
    assert [u["requirement"] for u in manifest["unavailable"]] == ["numpy<2"]
    assert manifest["unresolved_dependencies"][0]["package"] == "tflite-runtime==2.14.0"
    assert manifest["unresolved_dependencies"][0]["requires"].startswith("numpy")


def test_a_missing_required_package_names_package_and_platform(tmp_path: Path) -> None:
    # Coral's runtime is not on PyPI at all; it comes from Coral's apt repository on the device.
    with pytest.raises(BuildError) as caught:
        run(tmp_path, {"platforms": ARMV7L, "python_version": "3.11", "packages": ["pycoral==2.0.0"]})
    message = str(caught.value).splitlines()[0]
    assert "pycoral==2.0.0" in message and "manylinux_2_34_armv7l" in message
    assert caught.value.returncode not in (None, 0)


def test_bad_params_are_a_build_error_before_any_download(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="python_version"):
        run(tmp_path, {"platforms": ARMV7L, "python_version": "three", "packages": ["numpy"]})
    with pytest.raises(BuildError, match="platforms"):
        run(tmp_path, {"platforms": [], "python_version": "3.11", "packages": ["numpy"]})
    assert not (tmp_path / "wheels").exists() or not any((tmp_path / "wheels").iterdir())


@pytest.mark.docker
def test_the_step_runs_in_the_runtime_image(docker_client: Any, base_image: str, workspace: Path,
                                            cache_root: Path, tmp_path: Path) -> None:
    from edgefleet.backends.base import StepRequest
    from edgefleet.backends.docker import DockerBackend

    # The real environment: it names the CA bundle a TLS-inspecting proxy needs, if this machine has one.
    backend = DockerBackend(workspace, client_factory=lambda: docker_client, env=os.environ, cache_root=cache_root)
    out = tmp_path / "out"
    backend.run_step(StepRequest(kind="runtime.wheelhouse", builder="runtime", inputs={}, out_dir=out,
                                 params={"platforms": ARMV7L, "python_version": "3.11",
                                         "packages": ["tflite-runtime==2.14.0",
                                                      {"requirement": "numpy<2", "optional": True}]}),
                     lambda line: None)
    manifest = json.loads((out / MANIFEST).read_text())
    assert [f["tags"] for f in manifest["files"]] == [["cp311-cp311-manylinux_2_34_armv7l"]]
    assert (out / manifest["files"][0]["file"]).stat().st_uid == os.getuid()

