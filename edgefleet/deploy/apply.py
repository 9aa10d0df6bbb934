"""Carry out a DeployPlan on one device, under its lock.

Uploads are atomic and verified (see upload.py); after each one a ``.sha256``
sidecar records what was verified, which is how the facts probe knows a later
deploy can skip the file. The benchmark starts detached and survives an SSH drop.
"""
from __future__ import annotations

import json
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.markup import escape

from edgefleet.deploy.lock import DeviceLock
from edgefleet.deploy.plan import (DeployPlan, ProvisionRuntime, Skip, StartAgent, Upload,
                                   WriteRunConfig)
from edgefleet.deploy.upload import upload_verified
from edgefleet.errors import DeployError
from edgefleet.transport.base import Transport

Say = Callable[[str], None]


@dataclass
class ApplyResult:
    run_id: str
    sent_bytes: int = 0
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    agent_pid: int | None = None
    provisioned: bool = False
    runtime_venv: bool = False   # the agent runs from the provisioned venv (now or by an earlier deploy)


RUN_FILE = "run.json"  # the agent's name for a run's config in its run folder

# One round trip instead of three (each costs a process start on the device, and deploy writes several).
_WRITE_TEXT = 'mkdir -p -- "$1" && cat > "$2" && mv -f -- "$2" "$3"'


def _write_remote_text(transport: Transport, remote: str, text: str) -> None:
    """Write a small file atomically: temp name in the same folder, then rename."""
    transport.run(["sh", "-c", _WRITE_TEXT, "sh", posixpath.dirname(remote), f"{remote}.tmp", remote],
                  stdin=text.encode())


def _write_run_config(transport: Transport, action: WriteRunConfig) -> None:
    _write_remote_text(transport, action.remote, json.dumps(action.config, indent=2))


def provision_runtime(transport: Transport, workdir: str, action: ProvisionRuntime, python: str, say: Say) -> None:
    venv = f"{workdir}/runtime/venv"
    say(f"provisioning the runtime venv from the pushed wheelhouse ({len(action.requirements)} requirements)")
    transport.run(["rm", "-rf", "--", venv], timeout=120)
    transport.run([python, "-m", "venv", *(["--system-site-packages"] if action.system_site_packages else []), venv],
                  timeout=300)
    result = transport.run([f"{venv}/bin/python", "-m", "pip", "install", "--no-index", "--disable-pip-version-check",
                            "--find-links", action.wheelhouse, *action.requirements], timeout=900, check=False)
    if result.returncode != 0:
        raise DeployError(f"{transport.describe()}: installing the runtime from the wheelhouse failed "
                          f"(exit {result.returncode}); the device has no internet, so every wheel must be in "
                          f"the bundle:\n{result.stderr.strip()[-1500:]}")
    _write_remote_text(transport, f"{workdir}/runtime/provisioned.json",
                       json.dumps({"digest": action.digest, "requirements": list(action.requirements)}))


def provisioned_digest(transport: Transport, workdir: str) -> str | None:
    """The digest of the wheelhouse the device's runtime venv was provisioned from, if any."""
    result = transport.run(["cat", "--", f"{workdir}/runtime/provisioned.json"], check=False)
    if result.returncode != 0:
        return None
    try:
        digest = json.loads(result.stdout).get("digest")
    except (ValueError, AttributeError):
        return None
    return digest if isinstance(digest, str) else None


def runtime_python(workdir: str, provisioned: bool, fallback: str) -> str:
    return f"{workdir}/runtime/venv/bin/python" if provisioned else fallback


def apply_plan(plan: DeployPlan, transport: Transport, workdir: str, *, python: str = "python3",
               lock_wait_s: float = 0.0, say: Say = print, has_runtime_venv: bool = False) -> ApplyResult:
    result = ApplyResult(plan.run_id)
    pending_config: WriteRunConfig | None = None  # sent with the StartAgent that follows it
    with DeviceLock(transport, workdir, plan.run_id, wait_s=lock_wait_s):
        folders = sorted({posixpath.dirname(a.remote) for a in plan.actions if isinstance(a, Upload)})
        if folders:
            transport.run(["mkdir", "-p", "--", *folders])
        for action in plan.actions:
            if isinstance(action, Skip):
                result.skipped.append(action.remote)
            elif isinstance(action, Upload):
                say(f"upload {action.what} ({action.size:,} bytes)")
                sent = upload_verified(transport, action.local, action.remote, sha256=action.sha256,
                                       on_retry=lambda n, wait, err: say(f"  {escape(str(err))}; retry {n} in {wait:g} s"))
                result.sent_bytes += sent.sent_bytes
                if sent.resumed_bytes:
                    say(f"  resumed: {sent.resumed_bytes:,} bytes were already on the device, not sent again")
                # The plan was made before the lock: a deploy we waited for may have sent it meanwhile.
                (result.skipped if sent.skipped else result.uploaded).append(action.remote)
                _write_remote_text(transport, action.remote + ".sha256", action.sha256)
            elif isinstance(action, ProvisionRuntime):
                # Same reason: never rebuild a venv another deploy just made (its agent may be using it).
                if provisioned_digest(transport, workdir) == action.digest:
                    say("runtime venv already provisioned from this wheelhouse; left as it is")
                else:
                    provision_runtime(transport, workdir, action, python, say)
                    result.provisioned = True
                has_runtime_venv = True
            elif isinstance(action, WriteRunConfig):
                if pending_config is not None:
                    _write_run_config(transport, pending_config)
                pending_config = action
            elif isinstance(action, StartAgent):
                agent_python = runtime_python(workdir, has_runtime_venv, python)
                argv = [agent_python, action.agent, "start", action.run_dir]
                stdin = None
                if pending_config is not None:
                    if pending_config.remote == posixpath.join(action.run_dir, RUN_FILE):
                        # The agent validates run.json and writes it itself: one round trip instead of two.
                        argv, stdin = [*argv, "--config", "-"], json.dumps(pending_config.config).encode()
                    else:
                        _write_run_config(transport, pending_config)
                    pending_config = None
                started = transport.run(argv, timeout=60, stdin=stdin)
                say(f"agent started detached: {escape(started.stdout.strip())}")
                try:
                    result.agent_pid = int(started.stdout.strip().split()[-1])
                except (ValueError, IndexError):
                    result.agent_pid = None
        if pending_config is not None:
            _write_run_config(transport, pending_config)
    result.runtime_venv = has_runtime_venv
    return result
