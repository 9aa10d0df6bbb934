"""`invoke study`: build every format for this host, benchmark and evaluate each on it, compare.

The classic "which framework is fastest on my CPU" study, from one command: TFLite (fp32, fp16,
dynamic, int8, full-int8), ONNX Runtime, OpenVINO and (where TensorFlow is present) the SavedModel,
each with its latency at every thread count and its accuracy from the agent's eval mode.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgefleet.api.build import BuildOptions, build
from edgefleet.api.collect import CollectOptions, collect_benchmarks
from edgefleet.api.context import Env
from edgefleet.api.deploy import DeployOptions, deploy
from edgefleet.errors import ResultsError
from edgefleet.evaluation.kinds import for_recipe
from edgefleet.recipes.load import load_recipe
from edgefleet.report.study import StudyPaths, render_study
from edgefleet.report.summary import gate_floors, summarize
from edgefleet.report.tables import build_table
from edgefleet.report.variants import build_variant_table
from edgefleet.results.db import ResultsDB, results_db_path
from edgefleet.workspace import Workspace

STUDY_TARGET = "local"


@dataclass(frozen=True)
class StudyOptions:
    model: str | None = None
    target: str = STUDY_TARGET
    metric: str | None = None         # the accuracy metric the plots and table show; default: the task's own
    bench_overrides: tuple[tuple[str, float], ...] = ()
    workspace: Path | None = None


def study_metric(ws: Workspace, model: str | None) -> str:
    """The metric a study of this model plots by default: its evaluation kind's."""
    recipe = load_recipe(ws.models_dir, model or ws.settings.default_model).recipe
    return for_recipe(recipe.task.kind, recipe.evaluation.kind if recipe.evaluation else None).study_metric


def study(options: StudyOptions, env: Env | None = None) -> StudyPaths:
    env = env or Env()
    ws = env.workspace(options.workspace)
    env.console.rule(f"study: build every format for {options.target}")
    build(BuildOptions(target=options.target, model=options.model, workspace=ws.root), env)
    env.console.rule("study: benchmark and evaluate on the device")
    outcome = deploy(DeployOptions(target=options.target, model=options.model, wait=True, eval=True,
                                   bench_overrides=options.bench_overrides, workspace=ws.root), env)
    collected = collect_benchmarks(CollectOptions(runs=(outcome.run_id,), workspace=ws.root), env)
    if collected.report is None:
        raise ResultsError(f"run {outcome.run_id} produced no report")
    metric = options.metric or study_metric(ws, options.model)
    with ResultsDB(results_db_path(ws)) as db:
        table = build_table(db, [outcome.run_id], accuracy_metric=metric)
        variants = build_variant_table(db, table)
    # The gate judges its own metric: its floor belongs on the plot only when the study shows that metric.
    floors = gate_floors(summarize(variants)) if variants.metrics[:1] == (metric,) else {}
    paths = render_study(table, collected.report.out_dir, metric, gate=next(iter(floors.values()), None))
    env.console.print(paths.table.read_text(), markup=False)
    env.console.print(f"study: {paths.table}, {paths.latency_plot.name}, {paths.accuracy_plot.name}, "
                      f"{paths.pareto_plot.name if paths.pareto_plot else 'no time-vs-accuracy plot (no accuracy)'}")
    return paths
