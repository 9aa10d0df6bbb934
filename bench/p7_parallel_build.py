"""P7: a cold build of the full matrix for the bundled model, `--jobs 2` against `--jobs 1`.

The full matrix is every target (`invoke build --target T` for each, one after the other, from the
shell), starting each time from a fresh throwaway workspace with no artifact cache. The two settings
alternate, >= 5 cold builds each. Reported: the speed-up (jobs 1 time / jobs 2 time). Steps this machine
cannot run (Edge TPU compiler, Android AAR) are "not built here" in both.

    .venv/bin/python bench/p7_parallel_build.py [--runs 5] [--json out.json]

Takes ~40 min at --runs 5 (each cold matrix build is 3-5 min on two cores).
"""
from __future__ import annotations

import os

from _common import INVOKE, Report, Series, arguments, check_runs, interleaved, run_command, throwaway_workspace

TARGETS = ("rpi3", "jetson-nano", "android-arm64", "coral", "local")


def cold_matrix(jobs: int, per_target: dict[str, list[float]]) -> float:
    total = 0.0
    with throwaway_workspace(f"p7-j{jobs}", models=["shapes"]) as root:
        for target in TARGETS:
            elapsed = run_command([INVOKE, "build", "--target", target, "--jobs", str(jobs)], cwd=root,
                                  env={**os.environ, "COLUMNS": "200"}, expect=" steps")
            per_target.setdefault(f"{target} --jobs {jobs}", []).append(elapsed)
            total += elapsed
    return total


def main() -> None:
    args = arguments(__doc__.splitlines()[0]).parse_args()
    runs = check_runs(args.runs)
    report = Report("P7", "cold build of the full matrix, --jobs 2 vs --jobs 1")
    per_target: dict[str, list[float]] = {}
    samples = interleaved({"1": lambda: cold_matrix(1, per_target), "2": lambda: cold_matrix(2, per_target)},
                          runs=runs, warmup=0)
    one = report.add(Series("full matrix, --jobs 1", samples["1"]))
    two = report.add(Series("full matrix, --jobs 2", samples["2"]))
    for name, values in sorted(per_target.items()):
        report.add(Series(name, tuple(values)))
    report.ratios["speed-up (jobs 1 ÷ jobs 2)"] = one.median / two.median
    report.print()
    report.write(args.json)


if __name__ == "__main__":
    main()
