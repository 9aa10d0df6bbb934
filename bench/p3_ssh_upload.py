"""P3: pushing a 50 MB artifact over SSH to an emulated device with edgefleet's `upload_verified`.

Baseline, in the same run: OpenSSH `scp` of the same file to the same device, same key and known_hosts.
Both timings include opening the connection (scp cannot do otherwise). `upload_verified` also
checks free space, fsyncs and hashes the file ON the device before renaming it into place; the
plain `SshTransport.put` row shows the transfer alone. Target: >= 0.9x scp's throughput.

    .venv/bin/python bench/p3_ssh_upload.py [--runs 5] [--size-mb 50] [--json out.json]

Takes ~1 min.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from _common import Report, Series, arguments, check_runs, emulated_fleet, interleaved, run_command, scratch_dir

TARGET_RATIO = 0.9
DEVICE = "p3dev"


def scp_argv(device, local: Path, remote: str) -> list[str]:
    c = device.connection
    return ["scp", "-q", "-B", "-P", str(c.port), "-i", c.key_filename, "-o", f"UserKnownHostsFile={c.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", str(local), f"{c.user}@{c.host}:{remote}"]


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=50)
    args = parser.parse_args()
    runs = check_runs(args.runs)
    from edgefleet.deploy.upload import upload_verified
    from edgefleet.transport.registry import open_transport

    report = Report("P3", f"{args.size_mb} MB over SSH to one emulated device")
    with scratch_dir("p3") as tmp, emulated_fleet(tmp, [DEVICE]) as fleet:
        device = fleet.device(DEVICE)
        payload = tmp / "artifact.bin"
        payload.write_bytes(os.urandom(args.size_mb * 1024 * 1024))
        size_mb = payload.stat().st_size / 1e6
        sha = hashlib.sha256(payload.read_bytes()).hexdigest()
        remote_dir = Path(device.workdir) / "p3"  # the namespaces share this host's filesystem

        def fresh(name: str) -> str:
            # Each push must send the whole file: remove what the last one left (untimed).
            remote_dir.mkdir(exist_ok=True)
            for leftover in remote_dir.iterdir():
                leftover.unlink()
            return f"{remote_dir}/{name}"

        def scp() -> float:
            remote = fresh("scp.bin")
            return run_command(scp_argv(device, payload, remote))

        def verified() -> float:
            remote = fresh("verified.bin")
            start = time.perf_counter()
            with open_transport(device.connection, name=DEVICE) as transport:
                result = upload_verified(transport, payload, remote, sha256=sha)
            elapsed = time.perf_counter() - start
            if result.skipped or result.sent_bytes != payload.stat().st_size:
                raise SystemExit(f"upload_verified sent {result.sent_bytes} bytes (skipped={result.skipped})")
            return elapsed

        def put_only() -> float:
            remote = fresh("put.bin")
            start = time.perf_counter()
            with open_transport(device.connection, name=DEVICE) as transport:
                transport.put(payload, remote)
            return time.perf_counter() - start

        samples = interleaved({"scp": scp, "upload_verified": verified, "SshTransport.put": put_only}, runs=runs)
        seconds = {name: report.add(Series(f"{name} time", values)) for name, values in samples.items()}
        throughput = {name: report.add(Series(f"{name} throughput", tuple(size_mb / v for v in values), "MB/s"))
                      for name, values in samples.items()}
        scp_tp = throughput["scp"]
        for name in ("upload_verified", "SshTransport.put"):
            report.ratios[f"{name} ÷ scp (throughput)"] = throughput[name].median / scp_tp.median
        report.check(f"upload_verified >= {TARGET_RATIO}x scp's throughput",
                     report.ratios["upload_verified ÷ scp (throughput)"] >= TARGET_RATIO)
        report.facts["file"] = f"{size_mb:.1f} MB random bytes"
        report.facts["device"] = f"{device.connection.host}:{device.connection.port} ({fleet.inventory.isolation})"
        report.print(baseline=seconds["scp"])
        report.write(args.json)


if __name__ == "__main__":
    main()
