"""Structure of every builder: its builder.yaml validates and its Dockerfile renders pinned and offline.

No engine needed: the templates are rendered with the builders' own pins standing in for
the wheelhouse lock (the real lock holds the same pins plus their dependencies).
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from edgefleet.errors import ConfigError
from edgefleet.images.build import BuildContext, ContextFile
from edgefleet.images.builder_spec import BuilderSpec, load_builder_spec, pin_mismatches, read_constraints
from edgefleet.images.render import RenderInputs, VenvInputs, render_dockerfile
from edgefleet.images.wheelhouse import manylinux_platforms
from edgefleet.steps.android import TARGETS, bazel_command
from edgefleet.steps.registry import STEP_KINDS, resolve_step

REPO = Path(__file__).resolve().parents[1]
BUILDERS = ("tf", "edgetpu", "tftrt-prep", "android-aar", "runtime")
WHEEL = "dist/edgefleet-0.1.0-py3-none-any.whl"
# edgefleet's own dependencies are always in the lock, so no venv installs an empty list.
CORE_PIN = "pydantic==2.14.3"
PIN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[a-z0-9,_-]+\])?==[A-Za-z0-9.+!-]+$")


def render(builder_dir: Path) -> tuple[BuilderSpec, str]:
    spec = load_builder_spec(builder_dir)
    venvs = tuple(
        VenvInputs(spec=v, wheelhouse=f"wheelhouse/{v.path.strip('/').replace('/', '-')}",
                   requirements=(*v.packages, CORE_PIN) if v.edgefleet else v.packages, no_deps=v.no_deps)
        for v in spec.venvs)
    return spec, render_dockerfile(builder_dir, spec, RenderInputs(venvs=venvs, edgefleet_wheel=WHEEL))


def instructions(dockerfile: str) -> list[str]:
    """Dockerfile instructions with their continuation lines joined; comments dropped."""
    out: list[str] = []
    current = ""
    for line in dockerfile.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            out.append(current.strip())
            current = ""
    return out


def pip_installs(dockerfile: str) -> list[list[str]]:
    """The argument lists of every ``pip install`` in the RUN instructions."""
    found = []
    for ins in instructions(dockerfile):
        if not ins.startswith("RUN "):
            continue
        lexer = shlex.shlex(ins[4:], posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token in ("&&", "||", ";", "|", ">"):
                if len(command) >= 2 and command[0].endswith("pip") and command[1] == "install":
                    found.append(command[2:])
                command = []
            else:
                command.append(token)
    return found


@pytest.fixture(scope="module", params=BUILDERS)
def rendered(request: pytest.FixtureRequest) -> tuple[BuilderSpec, str]:
    return render(REPO / "builders" / request.param)


def test_starts_from_the_pinned_base_image(rendered: tuple[BuilderSpec, str]) -> None:
    spec, dockerfile = rendered
    froms = [i for i in instructions(dockerfile) if i.startswith("FROM ")]
    assert froms[0] == f"FROM {spec.base_image}"
    for line in froms:
        image = line.split()[1]
        assert ":" in image and not image.endswith(":latest"), line


def test_no_floating_versions(rendered: tuple[BuilderSpec, str]) -> None:
    _, dockerfile = rendered
    # Google names its pinned command-line tools builds "<build>_latest.zip"; that is not a floating tag.
    without_sdk_zip = re.sub(r"commandlinetools-linux-\d+_latest\.zip", "", dockerfile)
    assert not re.search(r"\blatest\b", without_sdk_zip, re.IGNORECASE)


def test_every_pip_install_is_offline_and_pinned(rendered: tuple[BuilderSpec, str]) -> None:
    spec, dockerfile = rendered
    installs = pip_installs(dockerfile)
    assert installs, "each builder installs at least edgefleet"
    for args in installs:
        assert "--no-index" in args, args
        packages = [a for a in args if not a.startswith("-") and a != "/tmp/wheelhouse"
                    and not a.startswith("/tmp/wheelhouse")]
        for package in packages:
            assert PIN_RE.match(package) or re.match(r"^/tmp/dist/edgefleet-[^ ]+\.whl(\[[a-z,]+\])?$", package), \
                f"{spec.name}: unpinned pip install of {package!r}"
    for venv in spec.venvs:
        for pin in (*venv.packages, *venv.no_deps):
            assert pin in dockerfile, f"{spec.name}: pin {pin} is not rendered"


def test_edgefleet_is_installed_with_its_extras_into_a_venv_on_path(rendered: tuple[BuilderSpec, str]) -> None:
    spec, dockerfile = rendered
    runner = spec.runner
    assert f"-m venv {runner.path}" in dockerfile
    assert re.search(rf"^ENV PATH={re.escape(runner.path)}/bin:", dockerfile, re.MULTILINE)
    extras = runner.edgefleet.extras if runner.edgefleet else ()
    suffix = f"[{','.join(extras)}]" if extras else ""
    assert f"/tmp/{WHEEL}{suffix}" in dockerfile


def test_every_step_kind_has_a_builder_and_every_builder_runs_a_kind() -> None:
    """The step registry is the one place that names a kind's builder; builder specs ask it."""
    on_disk = {p.parent.name for p in (REPO / "builders").glob("*/builder.yaml")}
    assert on_disk == set(BUILDERS)
    for kind in STEP_KINDS.values():
        assert kind.builder in on_disk, f"{kind.name} names builder {kind.builder!r}, which does not exist"
    specs = {name: load_builder_spec(REPO / "builders" / name) for name in BUILDERS}
    for name, spec in specs.items():
        assert spec.step_kinds, f"builders/{name} runs no registered step kind"
    assert sorted(k for spec in specs.values() for k in spec.step_kinds) == sorted(STEP_KINDS)
    assert specs["runtime"].step_kinds == ("runtime.wheelhouse", "tflite.runtime_compat")
    assert specs["edgetpu"].step_kinds == ("edgetpu.compile",)


def test_every_steps_module_implements_a_registered_kind() -> None:
    """No dead tables or stale targets in edgefleet/steps/: each module is a registered kind's implementation
    or part of the step contract, and each registered target resolves."""
    contract = {"__init__", "base", "registry", "process"}
    implementations = {kind.target.partition(":")[0] for kind in STEP_KINDS.values()}
    modules = {f"edgefleet.steps.{p.stem}" for p in (REPO / "edgefleet" / "steps").glob("*.py")}
    assert modules - {f"edgefleet.steps.{name}" for name in contract} == implementations
    for name in STEP_KINDS:
        assert callable(resolve_step(name)), name


def test_host_constrained_pins_match_the_constraints_file() -> None:
    constraints = read_constraints(REPO / "requirements" / "constraints.txt")
    for name in BUILDERS:
        assert pin_mismatches(load_builder_spec(REPO / "builders" / name), constraints) == []


def test_tf_builder_has_the_converters_and_tf_keras_without_deps() -> None:
    spec, dockerfile = render(REPO / "builders" / "tf")
    assert spec.runner.edgefleet is not None and spec.runner.edgefleet.extras == ("convert",)
    pinned = {p.split("==")[0] for p in spec.runner.packages}
    assert {"tensorflow-cpu", "onnx", "onnx2tf", "onnxruntime", "openvino", "tf2onnx", "onnxsim",
            "onnx_graphsurgeon", "sng4onnx", "psutil", "ai-edge-litert"} <= pinned
    no_deps = next(args for args in pip_installs(dockerfile) if "--no-deps" in args)
    assert "tf_keras==2.21.0" in no_deps
    assert not spec.needs_network and not spec.step_network


def test_edgetpu_builder_installs_the_compiler_from_corals_apt_repository() -> None:
    spec, dockerfile = render(REPO / "builders" / "edgetpu")
    assert spec.needs_network
    assert "https://packages.cloud.google.com/apt/doc/apt-key.gpg" in dockerfile
    assert re.search(r"deb \[signed-by=/etc/apt/keyrings/coral-edgetpu\.gpg\] https://packages\.cloud\.google\.com/apt "
                     r"coral-edgetpu-stable main", dockerfile)
    assert "edgetpu-compiler=16.0" in dockerfile
    assert "edgetpu_compiler --version" in dockerfile


def test_android_builder_pins_bazel_sdk_ndk_and_configures_tensorflow() -> None:
    spec, dockerfile = render(REPO / "builders" / "android-aar")
    assert spec.needs_network and spec.step_network
    assert "android-ndk-r21e-linux-x86_64.zip" in dockerfile and "sha1sum -c" in dockerfile
    assert "releases/download/6.1.0/bazel-6.1.0-linux-x86_64" in dockerfile
    platform_api = int(re.search(r'"platforms;android-(\d+)"', dockerfile)[1])
    assert platform_api >= 23
    assert re.search(r'"build-tools;\d+\.\d+\.\d+"', dockerfile)
    assert f"--branch {spec.versions['tensorflow_source']} https://github.com/tensorflow/tensorflow.git" in dockerfile
    assert re.match(r"^v\d+\.\d+\.\d+$", spec.versions["tensorflow_source"])
    configure = next(i for i in instructions(dockerfile) if "./configure" in i)
    for setting in ("TF_SET_ANDROID_WORKSPACE=1", "ANDROID_NDK_API_LEVEL=21", "ANDROID_API_LEVEL=30",
                    "ANDROID_BUILD_TOOLS_VERSION=30.0.3", "TF_NEED_CUDA=0"):
        assert setting in configure
    # The Bazel build itself is the android.aar step's command, not part of the image.
    assert "bazel build" not in dockerfile


def test_android_step_builds_both_aar_targets_for_the_requested_abis(tmp_path: Path) -> None:
    command = bazel_command(("arm64-v8a", "armeabi-v7a"), tmp_path)
    assert command[:1] == ["bazel"] and "build" in command and "-c" in command and "opt" in command
    assert "--fat_apk_cpu=arm64-v8a,armeabi-v7a" in command
    assert "//tensorflow/lite/java:tensorflow-lite" in command
    assert "//tensorflow/lite/java:tensorflow-lite-gpu" in command
    assert set(TARGETS.values()) <= set(command)


def test_tftrt_prep_records_the_jetpack_tensorflow_it_targets() -> None:
    spec, dockerfile = render(REPO / "builders" / "tftrt-prep")
    assert spec.target is not None
    assert (spec.target.jetpack, spec.target.tensorflow) == ("4.6.1", "2.7.0+nv22.1")
    # The x86_64 CPU build of the same TF minor as the device's NVIDIA build.
    assert spec.target.tensorflow.split(".")[:2] == ["2", "7"] and "tensorflow-cpu==2.7.4" in dockerfile
    assert "EDGEFLEET_TARGET_TF_VERSION=2.7.0+nv22.1" in dockerfile
    target_venv = next(v for v in spec.venvs if v.edgefleet is None)
    assert not target_venv.host_constraints and target_venv.python_version == "3.9"


def test_a_missing_template_variable_is_an_error_naming_it(tmp_path: Path) -> None:
    import shutil

    builder_dir = tmp_path / "runtime"
    shutil.copytree(REPO / "builders" / "runtime", builder_dir)
    template = builder_dir / "Dockerfile.j2"
    template.write_text(template.read_text() + "ENV X={{ versions.bazel_typo }}\n")
    with pytest.raises(ConfigError, match=r"Dockerfile\.j2:\d+:1: .*bazel_typo"):
        render(builder_dir)


@pytest.mark.parametrize(("change", "message"), [
    ({"colour": "blue"}, "unknown key 'colour'"),
    ({"venvs": [{"packages": ["numpy>=1.26"], "edgefleet": {}}]}, "must be pinned exactly"),
    ({"base_image": "python:latest"}, "non-floating tag"),
    ({"versions": {"bazel": "latest"}}, "floating version"),
    ({"venvs": [{"path": "/opt/a"}]}, "exactly one venv must install edgefleet"),
    ({"step_kinds": ["runtime.wheelhouse"]}, "step_kinds is not read any more: each step kind names its builder "
                                             "in edgefleet/steps/registry.py"),
])
def test_bad_builder_yaml_is_a_config_error_with_its_location(tmp_path: Path, change: dict, message: str) -> None:
    from ruamel.yaml import YAML

    yaml = YAML()
    data = yaml.load((REPO / "builders" / "runtime" / "builder.yaml").read_text())
    data.update(change)
    builder_dir = tmp_path / "runtime"
    builder_dir.mkdir()
    with (builder_dir / "builder.yaml").open("w") as f:
        yaml.dump(data, f)
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        load_builder_spec(builder_dir)
    assert re.search(r"builder\.yaml:\d+:\d+", str(caught.value))


def test_the_image_digest_covers_the_dockerfile_and_every_context_file(tmp_path: Path) -> None:
    spec = load_builder_spec(REPO / "builders" / "runtime")
    wheel = tmp_path / "w.whl"
    wheel.write_bytes(b"one")
    files = (ContextFile("dist/w.whl", wheel, "a" * 64),)
    base = BuildContext(spec=spec, dockerfile="FROM x:1\n", files=files)
    assert base.digest == BuildContext(spec=spec, dockerfile="FROM x:1\n", files=files).digest
    assert base.tag == f"edgefleet/builder-runtime:{base.digest[:12]}"
    assert BuildContext(spec=spec, dockerfile="FROM x:1\n# c\n", files=files).digest != base.digest
    changed_file = (ContextFile("dist/w.whl", wheel, "b" * 64),)
    assert BuildContext(spec=spec, dockerfile="FROM x:1\n", files=changed_file).digest != base.digest
    renamed = (ContextFile("dist/v.whl", wheel, "a" * 64),)
    assert BuildContext(spec=spec, dockerfile="FROM x:1\n", files=renamed).digest != base.digest


def test_manylinux_platforms_cover_every_glibc_down_to_2_17() -> None:
    tags = manylinux_platforms("x86_64", "2.36")
    assert tags[0] == "manylinux_2_36_x86_64" and "manylinux_2_28_x86_64" in tags
    assert "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux_2_37_x86_64" not in tags
