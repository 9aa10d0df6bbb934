"""Profiles load from YAML once, and every mistake is reported at file:line:col."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from edgefleet.errors import ConfigError
from edgefleet.profiles.load import load_all_profiles, load_profile, load_profile_file, profile_paths
from edgefleet.profiles.model import Profile

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """\
name: dev
device:
  board: test board
  arch: aarch64
  os: test os
  python: "3.11"
runtime:
  name: tflite-runtime
  provided_by: device
formats:
  tflite:
    quantizations: [fp32]
bench:
  threads: [1, 2]
workdir: /opt/edgefleet
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_profile_file(path)
    return str(info.value)


def test_every_shipped_profile_is_valid():
    loaded, errors = load_all_profiles(REPO / "targets")
    assert errors == []
    names = {p.profile.name for p in loaded}
    assert {"rpi3", "jetson-nano", "android-arm64", "coral", "local"} <= names


@pytest.mark.parametrize("name, arch, expected_formats", [
    ("rpi3", "armv7l", {"tflite"}),
    ("jetson-nano", "aarch64", {"tflite", "tftrt"}),
    ("android-arm64", "aarch64", {"tflite", "android_aar"}),
    ("coral", "aarch64", {"tflite", "edgetpu"}),
    ("local", "x86_64", {"tflite", "onnx", "openvino", "savedmodel"}),
])
def test_shipped_profiles_say_what_the_issue_asks(name, arch, expected_formats):
    profile = load_profile(REPO / "targets", name).profile
    assert profile.device.arch == arch
    present = {f for f in type(profile.formats).model_fields if getattr(profile.formats, f) is not None}
    assert present == expected_formats


def test_rpi3_inherits_base_bench_defaults_and_overrides_threads():
    loaded = load_profile(REPO / "targets", "rpi3")
    assert loaded.profile.bench.threads == (1, 2, 3, 4)
    assert loaded.profile.bench.min_runs == 100  # from _base.yaml
    assert [p.name for p in loaded.chain] == ["rpi3.yaml", "_base.yaml"]


def test_misspelled_key_names_file_line_col_and_suggestion(tmp_path):
    path = write(tmp_path, "dev", MINIMAL.replace("  threads: [1, 2]", "  thread: [1, 2]"))
    message = error_of(path)
    assert message.endswith("dev.yaml:14:3: unknown key 'thread' (did you mean 'threads'?)")


def test_unknown_quantization_suggests_the_closest(tmp_path):
    path = write(tmp_path, "dev", MINIMAL.replace("[fp32]", "[fp32, fp61]"))
    message = error_of(path)
    assert "dev.yaml:12:27:" in message
    assert "'fp61' is not one of" in message and "(did you mean 'fp16'?)" in message


def test_unknown_format_is_an_unknown_key(tmp_path):
    path = write(tmp_path, "dev", MINIMAL.replace("  tflite:\n", "  tflit:\n"))
    assert "dev.yaml:11:3: unknown key 'tflit' (did you mean 'tflite'?)" in error_of(path)


def test_wrong_type_names_the_key_and_value(tmp_path):
    path = write(tmp_path, "dev", MINIMAL.replace("  threads: [1, 2]", "  threads: [1, two]"))
    message = error_of(path)
    assert "dev.yaml:14:16: bench.threads.1:" in message and "'two'" in message


def test_missing_required_key(tmp_path):
    path = write(tmp_path, "dev", MINIMAL.replace("workdir: /opt/edgefleet\n", ""))
    assert "missing required key 'workdir'" in error_of(path)


def test_every_error_is_reported_not_only_the_first(tmp_path):
    text = MINIMAL.replace("  thread", "  thread").replace("arch: aarch64", "arch: arm64") \
        .replace("  threads: [1, 2]", "  threds: [1, 2]")
    message = error_of(write(tmp_path, "dev", text))
    assert "device.arch" in message and "unknown key 'threds'" in message


def test_yaml_syntax_error_has_position(tmp_path):
    path = write(tmp_path, "dev", MINIMAL.replace("  arch: aarch64", "  arch: [aarch64"))
    message = error_of(path)
    assert "dev.yaml:" in message and "invalid YAML" in message


def test_extends_merges_and_reports_positions_in_the_right_file(tmp_path):
    write(tmp_path, "_common", """\
        bench:
          threads: [1]
          min_rnus: 5
        """)
    child = write(tmp_path, "dev", "extends: _common\n" + MINIMAL.replace("bench:\n  threads: [1, 2]\n", ""))
    message = error_of(child)
    assert "_common.yaml:3:3: unknown key 'min_rnus' (did you mean 'min_runs'?)" in message


def test_extends_deep_merges_child_over_base(tmp_path):
    write(tmp_path, "_common", """\
        bench:
          min_runs: 7
          threads: [4]
        """)
    child = write(tmp_path, "dev", "extends: _common\n" + MINIMAL)
    bench = load_profile_file(child).profile.bench
    assert bench.min_runs == 7 and bench.threads == (1, 2)


def test_extends_cycle_and_missing_base(tmp_path):
    write(tmp_path, "_a", "extends: _b\n")
    write(tmp_path, "_b", "extends: _a\n")
    assert "cycle" in error_of(write(tmp_path, "dev", "extends: _a\n" + MINIMAL))
    assert "no such profile (did you mean '_a'?)" in error_of(write(tmp_path, "dev", "extends: _aa\n" + MINIMAL))


def test_unknown_target_suggests_a_name():
    with pytest.raises(ConfigError, match=r"unknown target 'rpi' \(did you mean 'rpi3'\?\)"):
        load_profile(REPO / "targets", "rpi")


def test_name_must_match_file(tmp_path):
    assert "must match the file name" in error_of(write(tmp_path, "other", MINIMAL))


@pytest.mark.parametrize("workdir_yaml", ['relative/dir', '/opt/../etc', '/', '/home', '"/opt/a\\nb"'])
def test_unsafe_workdirs_are_rejected(tmp_path, workdir_yaml):
    path = write(tmp_path, "dev", MINIMAL.replace("workdir: /opt/edgefleet", f"workdir: {workdir_yaml}"))
    assert "workdir" in error_of(path)


def test_profiles_are_frozen(tmp_path):
    profile = load_profile_file(write(tmp_path, "dev", MINIMAL)).profile
    with pytest.raises(Exception):
        profile.workdir = "/elsewhere"  # type: ignore[misc]
    assert isinstance(profile, Profile)


def test_builtin_local_is_the_default_when_the_workspace_has_none(tmp_path):
    assert profile_paths(tmp_path / "targets")["local"].parent.name == "builtin"
