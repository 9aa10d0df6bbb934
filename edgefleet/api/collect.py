"""`invoke collect-benchmarks`: pull every run's logs, ingest them idempotently, and render the report."""
from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pydantic import TypeAdapter
from rich.markup import escape

from edgefleet.api.context import Env
from edgefleet.deploy.devices import DEFAULT_LAB_WAIT_S, lab_connection, recorded_lab
from edgefleet.errors import EdgefleetError, ResultsError
from edgefleet.lab.config import Lab
from edgefleet.evaluation.score_run import RunScores, eval_files, score_run, store
from edgefleet.report.render import ReportPaths, render_table
from edgefleet.report.tables import ReportTable, build_table, rich_table
from edgefleet.report.variants import build_variant_table, rich_variant_table
from edgefleet.results.db import ResultsDB, results_db_path
from edgefleet.results.ingest import IngestSummary, ingest_run_dir
from edgefleet.runs import RunRecord, load_runs
from edgefleet.transport.connections import Connection
from edgefleet.transport.registry import open_transport
from edgefleet.workspace import Workspace

CONNECTION = TypeAdapter(Connection)


@dataclass(frozen=True)
class CollectOptions:
    runs: tuple[str, ...] = ()          # default: the newest run on every device
    baseline: str | None = None         # compare against this earlier run
    regression_threshold: float = 0.10
    jobs: int = 4
    lab_wait_s: float = DEFAULT_LAB_WAIT_S   # boards in a labgrid place: how long to wait in the lab's queue
    workspace: Path | None = None


@dataclass
class CollectOutcome:
    run_ids: list[str]
    ingested: dict[str, IngestSummary] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    report: ReportPaths | None = None
    scores: dict[str, RunScores] = field(default_factory=dict)


def choose_runs(records: list[RunRecord], wanted: tuple[str, ...]) -> list[RunRecord]:
    if wanted:
        by_id = {r.run_id: r for r in records}
        missing = [w for w in wanted if w not in by_id]
        if missing:
            raise ResultsError(f"no deploy record for run(s) {', '.join(missing)}; known: "
                               f"{', '.join(sorted(by_id)) or 'none'}")
        return [by_id[w] for w in wanted]
    newest: dict[str, RunRecord] = {}
    for record in records:  # ids start with a UTC timestamp, so sorted order is time order
        if record.device not in newest or record.run_id > newest[record.device].run_id:
            newest[record.device] = record
    return sorted(newest.values(), key=lambda r: r.run_id)


def pull_run(record: RunRecord, into: Path, lab: Lab | None = None, lab_wait_s: float = DEFAULT_LAB_WAIT_S,
             say: Callable[[str], None] = print) -> Path:
    """Fetch run.json, results.jsonl and the agent's own view of the status into ``into``; a board in a labgrid
    place is held meanwhile."""
    run_dir = f"{record.workdir}/runs/{record.run_id}"
    into.mkdir(parents=True, exist_ok=True)
    with lab_connection(CONNECTION.validate_python(record.connection), lab, wait_s=lab_wait_s, say=say) as connection, \
            open_transport(connection, name=record.device) as transport:
        transport.get(f"{run_dir}/run.json", into / "run.json")
        has_results = transport.run(["test", "-f", f"{run_dir}/results.jsonl"], check=False).ok
        if has_results:
            transport.get(f"{run_dir}/results.jsonl", into / "results.jsonl")
            # The predictions of cells that evaluated accuracy (deploy --eval), scored here on the host.
            for relative in eval_files((into / "results.jsonl").read_bytes()):
                (into / relative).parent.mkdir(parents=True, exist_ok=True)
                transport.get(f"{run_dir}/{relative}", into / relative)
        # The agent's status command turns "running" with a dead pid into "interrupted".
        status = transport.run([record.python, record.agent, "status", run_dir], timeout=60, check=False)
        if status.ok:
            (into / "status.json").write_text(status.stdout)
    return into


def score_accuracy(db: ResultsDB, record: RunRecord, folder: Path, ws: Workspace, outcome: CollectOutcome,
                   env: Env) -> None:
    """Score the run's on-device evaluations (deploy --eval) into the accuracy table, beside its latencies."""
    try:
        scores = score_run(folder, db.cells([record.run_id]), run_id=record.run_id, device=record.device,
                           ground_truth_dir=ws.state_dir / "eval")
    except ResultsError as exc:
        outcome.errors[record.run_id] = str(exc)
        env.console.print(f"[red]could not score the evaluation of[/] {record.run_id}: {escape(str(exc))}")
        return
    store(db, scores)
    outcome.scores[record.run_id] = scores
    for problem in scores.problems:
        env.console.print(f"[yellow]{escape(record.device)}: evaluation did not run:[/] {escape(problem)}")
    for verdict in scores.failed_gate:
        env.console.print(f"[red]{escape(record.device)}: {escape(verdict.variant)}: accuracy gate failed:[/] "
                          f"{escape(verdict.reason)}")
    if scores.scores:
        env.console.print(f"{record.device}: run {record.run_id}: {len(scores.scores)} evaluations scored, "
                          f"{len(scores.failed_gate)} failed the accuracy gate")


def bench_settings(collected: Path, run_ids: list[str]) -> dict[tuple[str, str], dict]:
    """Each collected (run, device)'s run.json bench settings: the database keeps only the result lines, and a
    baseline comparison warns when these differ."""
    settings = {}
    for run_id in run_ids:
        for path in sorted((collected / run_id).glob("*/run.json")):
            try:
                run = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # ingest already said what is wrong with it; the comparison just has less to go on
            if isinstance(run, dict) and isinstance(run.get("bench"), dict):
                settings[(run_id, str(run.get("device", path.parent.name)))] = run["bench"]
    return settings


def print_comparison(table: ReportTable, env: Env) -> None:
    """The baseline comparison in a few lines: counts per verdict and bucket, then what differs between the runs."""
    if not table.baseline_run:
        return
    env.console.print(f"compared with {escape(table.baseline_run)}: {escape(table.comparison_summary)}")
    for row in table.rows:
        if row.verdict == "regressed":
            interval = f"{row.ci_low:.2f}×–{row.ci_high:.2f}×" if row.ci_low is not None else "no interval"
            ratio = f"{row.ratio:.2f}× ({interval})" if row.ratio is not None else escape(row.reason or row.status)
            env.console.print(f"[red]regressed[/] {escape(row.device)} / {escape(row.cell)}: "
                              f"{escape(row.bucket or '')}, {ratio}")
    for warning in table.baseline_warnings:
        env.console.print(f"[yellow]warning:[/] {escape(warning)}")


def collect_benchmarks(options: CollectOptions, env: Env | None = None) -> CollectOutcome:
    env = env or Env()
    ws = env.workspace(options.workspace)
    records = choose_runs(load_runs(ws.state_dir), options.runs)
    if not records:
        raise ResultsError("no runs to collect: deploy first (`invoke deploy --target T`)")
    outcome = CollectOutcome([r.run_id for r in records])
    collected = ws.state_dir / "collected"

    def fetch(record: RunRecord) -> tuple[RunRecord, Path | None, str | None]:
        try:
            lab = recorded_lab(ws.targets_dir, ws.state_dir, record.target, record.device)
            return record, pull_run(record, collected / record.run_id / record.device, lab, options.lab_wait_s,
                                    lambda line: env.console.print(escape(line))), None
        except EdgefleetError as exc:
            return record, None, str(exc)

    with ThreadPoolExecutor(max_workers=max(1, options.jobs)) as pool:
        fetched = list(pool.map(fetch, records))
    with ResultsDB(results_db_path(ws)) as db:
        for record, folder, error in fetched:
            if error is not None:
                outcome.errors[record.run_id] = error
                env.console.print(f"[red]could not collect[/] {record.run_id} from {record.device}: {escape(error)}")
            if folder is None and not db.runs([record.run_id]):
                continue
            if folder is not None:
                summary = ingest_run_dir(db, folder, ws.state_dir / "quarantine")
                outcome.ingested[record.run_id] = summary
                db.register_run(record.run_id, record.device, target=record.target, model=record.model,
                                emulated=record.emulated)
                note = f", {summary.quarantined} bad lines quarantined in {escape(str(summary.quarantine_file))}" \
                    if summary.quarantined else ""
                env.console.print(f"{record.device}: run {record.run_id}: {summary.ingested} new cells, "
                                  f"{summary.unchanged} unchanged{note}")
                score_accuracy(db, record, folder, ws, outcome, env)
        run_ids = [r.run_id for r in records if db.runs([r.run_id])]
        if not run_ids:
            raise ResultsError("nothing was collected; see the errors above")
        name = run_ids[0] if len(run_ids) == 1 else \
            "fleet-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        bench = bench_settings(collected, run_ids + ([options.baseline] if options.baseline else []))
        table = build_table(db, run_ids, baseline_run=options.baseline,
                            regression_threshold=options.regression_threshold, bench=bench)
        env.console.print(rich_table(table))
        print_comparison(table, env)
        variants = build_variant_table(db, table)
        if variants.has_accuracy:
            env.console.print(rich_variant_table(variants))
        # The same table, bootstrap intervals and run.json settings included, renders the report.
        outcome.report = render_table(table, ws.reports_dir / name, variants=variants)
        (outcome.report.out_dir / "runs.json").write_text(json.dumps(run_ids, indent=2))
    env.console.print(f"report: {escape(str(outcome.report.html))}")
    return outcome
