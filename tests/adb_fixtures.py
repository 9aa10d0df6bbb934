"""A private adb server for tests that use the real ``adb`` binary with no phone attached.
Loaded with ``pytest_plugins = ["adb_fixtures"]``."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def private_adb_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """An adb server of our own (own port on 127.0.0.1, own HOME for its key), killed afterwards."""
    if shutil.which("adb") is None:
        if os.environ.get("CI"):
            pytest.fail("adb is not installed (apt-get install adb)")
        pytest.skip("adb is not installed (apt-get install adb)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(port))
    monkeypatch.setenv("HOME", str(tmp_path))
    env = dict(os.environ)
    yield env
    subprocess.run(["adb", "kill-server"], env=env, capture_output=True, timeout=20)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _listening(port):
        time.sleep(0.1)
    assert not _listening(port), "adb server still running after kill-server"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
