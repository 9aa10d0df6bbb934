"""P5: an ONNX->TFLite artifact (onnx2tf) against the native Keras->TFLite conversion of the same network.

In a throwaway workspace the bundled detector is built to TFLite fp32 (`tflite.convert`) and to ONNX
(`onnx.from_tf`, tf2onnx); that ONNX becomes the source of a second recipe, built to TFLite fp32 by
`onnx2tf.convert`. Same network, same weights, two paths. Latency: a bare `interpreter.invoke()` loop
in a fresh process per measurement, the two models alternating (15 pairs by default). TRANSPOSE ops:
the artifact reports. Targets: the median pairwise latency ratio onnx2tf / native <= 1.05, and no
TRANSPOSE beyond what the native model has.

    .venv/bin/python bench/p5_onnx2tf_vs_keras.py [--runs 15] [--iterations 500] [--threads 1] [--json out.json]

Takes ~2 min (three conversions, then the timing).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from _common import PYTHON, Report, Series, arguments, check_runs, console, interleaved, quiet_env, \
    throwaway_workspace
from p4_agent_overhead import BARE_LOOP

LIMIT = 1.05
NATIVE_TARGET, ONNX_TARGET, ONNX_MODEL = "p5native", "p5onnx", "shapes-onnx"
PROFILE = """\
device: {{board: this host, arch: x86_64, os: linux, python: "3.11"}}
runtime: {{name: ai-edge-litert, provided_by: device}}
formats: {{tflite: {{quantizations: [fp32]}}{extra}}}
workdir: /var/tmp/edgefleet-p5
"""


def build_both(root: Path) -> tuple[dict, dict]:
    """The two fp32 manifests: (native Keras->TFLite, ONNX->TFLite)."""
    from edgefleet.api.build import BuildOptions, build
    from edgefleet.store import ArtifactStore

    store = ArtifactStore(root / ".edgefleet" / "artifacts")
    (root / "targets" / f"{NATIVE_TARGET}.yaml").write_text(PROFILE.format(extra=", onnx: {opset: 13}"))
    (root / "targets" / f"{ONNX_TARGET}.yaml").write_text(PROFILE.format(extra=""))
    native = build(BuildOptions(target=NATIVE_TARGET, model="shapes", workspace=root), quiet_env(root))
    steps = {o.step.id: o for o in native.outcomes}
    onnx_file = store.primary_file(steps["onnx"].step.key)

    # The ONNX export becomes a model of its own: same input spec, data and post-processing.
    source, derived = root / "models" / "shapes", root / "models" / ONNX_MODEL
    shutil.copytree(source, derived, ignore=shutil.ignore_patterns("*.keras", "train.py"))
    shutil.copyfile(onnx_file, derived / "shapes_detector.onnx")
    recipe = (source / "recipe.yaml").read_text()
    recipe = recipe.replace("name: shapes\n", f"name: {ONNX_MODEL}\n", 1)
    recipe = recipe.replace("  format: keras\n  path: shapes_detector.keras",
                            "  format: onnx\n  path: shapes_detector.onnx")
    (derived / "recipe.yaml").write_text(recipe)
    converted = build(BuildOptions(target=ONNX_TARGET, model=ONNX_MODEL, workspace=root), quiet_env(root))
    onnx_steps = {o.step.id: o for o in converted.outcomes}
    if onnx_steps["tflite/fp32"].step.kind != "onnx2tf.convert":
        raise SystemExit(f"expected onnx2tf.convert, the plan has {onnx_steps['tflite/fp32'].step.kind}")
    return steps["tflite/fp32"].manifest, onnx_steps["tflite/fp32"].manifest


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], runs=15)
    parser.add_argument("--iterations", type=int, default=500, help="timed invokes per process")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    runs = check_runs(args.runs)
    from edgefleet.store import ArtifactStore

    report = Report("P5", "onnx2tf TFLite vs native Keras TFLite, same network")
    with throwaway_workspace("p5", models=["shapes"]) as root:
        console.print("converting: Keras->TFLite, Keras->ONNX, ONNX->TFLite (untimed)")
        native, converted = build_both(root)
        store = ArtifactStore(root / ".edgefleet" / "artifacts")
        paths = {"native": store.primary_file(native["key"]), "onnx2tf": store.primary_file(converted["key"])}

        def p50(name: str) -> float:
            out = subprocess.run([PYTHON, "-c", BARE_LOOP, str(paths[name]), str(args.threads), str(args.warmup),
                                  str(args.iterations)], check=True, capture_output=True, text=True, timeout=600)
            return float(json.loads(out.stdout.strip().splitlines()[-1])["p50_ms"])

        samples = interleaved({"native": lambda: p50("native"), "onnx2tf": lambda: p50("onnx2tf")}, runs=runs,
                              alternate=True)
        base = report.add(Series("Keras->TFLite (tflite.convert), p50 per process", samples["native"], "ms"))
        other = report.add(Series("ONNX->TFLite (onnx2tf.convert), p50 per process", samples["onnx2tf"], "ms"))
        # Pairs measured back to back see the same load on this shared host; the median pair is the verdict.
        paired = report.add(Series("onnx2tf ÷ native, pairwise", tuple(
            o / n for o, n in zip(samples["onnx2tf"], samples["native"], strict=True)), "ratio"))
        report.ratios["onnx2tf ÷ native (medians)"] = other.median / base.median
        report.ratios["onnx2tf ÷ native (median of pairs)"] = paired.median
        transposes = {name: m["report"].get("transpose_count") for name, m in
                      (("native", native), ("onnx2tf", converted))}
        for name, m in (("native", native), ("onnx2tf", converted)):
            r = m["report"]
            report.facts[f"{name}"] = (f"{paths[name].name}: {m['size_bytes'] / 1e6:.2f} MB, "
                                       f"{sum(r.get('ops', {}).values()) if isinstance(r.get('ops'), dict) else '?'}"
                                       f" ops, TRANSPOSE {r.get('transpose_count')}, inputs "
                                       f"{[i.get('shape') for i in r.get('inputs', [])]}, fidelity passed "
                                       f"{r.get('fidelity', {}).get('passed')}")
        report.facts["ops that differ"] = op_difference(native["report"].get("ops"), converted["report"].get("ops"))
        report.check(f"onnx2tf latency <= {LIMIT}x native (median of pairs)", paired.median <= LIMIT)
        report.check(f"no extra TRANSPOSE ({transposes['onnx2tf']} vs {transposes['native']})",
                     transposes["onnx2tf"] is not None and transposes["onnx2tf"] <= (transposes["native"] or 0))
        report.print(baseline=base)
        report.write(args.json)


def op_difference(a: object, b: object) -> str:
    if not isinstance(a, dict) or not isinstance(b, dict):
        return "op histograms not reported"
    diff = {k: (a.get(k, 0), b.get(k, 0)) for k in sorted(set(a) | set(b)) if a.get(k, 0) != b.get(k, 0)}
    return ", ".join(f"{k} {n}->{o}" for k, (n, o) in diff.items()) or "none"


if __name__ == "__main__":
    main()
