"""Write a benchmark report: markdown, HTML, CSV, JSON and PNG plots, all from one ReportTable."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgefleet.errors import ResultsError
from edgefleet.report.devices import DEVICE_COLUMNS, differences
from edgefleet.report.plots import render_plots
from edgefleet.report.summary import caption, gate_floors, step_text, summarize
from edgefleet.report.summary import columns as summary_columns
from edgefleet.report.tables import EMULATED_NOTE, ReportTable, build_table, format_value, write_csv, write_json
from edgefleet.report.variants import VariantTable, build_variant_table, write_variants_csv, write_variants_json
from edgefleet.results.db import ResultsDB

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates" / "report"
PLOTS_DIR = "plots"


@dataclass(frozen=True)
class ReportPaths:
    out_dir: Path
    markdown: Path
    html: Path
    csv: Path
    json: Path
    plots: tuple[Path, ...]
    variants_csv: Path | None = None
    variants_json: Path | None = None


def _md_escape(value: object) -> str:
    # A pipe would split a markdown table cell; a newline would end the row.
    return str(value).replace("|", "\\|").replace("\n", " ")


def _environment(templates_dir: Path):  # -> jinja2.Environment
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    if not templates_dir.is_dir():
        raise ResultsError(f"the report templates are missing: {templates_dir}")
    env = Environment(loader=FileSystemLoader(str(templates_dir)), undefined=StrictUndefined,
                      autoescape=select_autoescape(enabled_extensions=("html", "html.j2"), default=False),
                      keep_trailing_newline=True)
    env.filters["md"] = _md_escape
    env.filters["fmt"] = lambda value, key="": format_value(key, value)
    return env


def render_table(table: ReportTable, out_dir: Path, *, templates_dir: Path = TEMPLATES_DIR,
                 variants: VariantTable | None = None) -> ReportPaths:
    out_dir = Path(out_dir)
    variants = variants or VariantTable((), (), ())
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = summarize(variants)
    plots = render_plots(table, out_dir / PLOTS_DIR, gate_floors(summaries))
    context = {
        "table": table, "rows": table.rows, "runs": table.runs, "columns": table.columns,
        "emulated_note": EMULATED_NOTE, "plots": [p.relative_to(out_dir).as_posix() for p in plots],
        "baseline_run": table.baseline_run, "threshold_pct": round(table.regression_threshold * 100, 1),
        "regressions": table.regressions, "variants": variants,
        "summaries": summaries, "summary_columns": summary_columns, "step_text": step_text,
        "summary_caption": caption(summaries),
        "devices": table.devices, "device_columns": DEVICE_COLUMNS, "device_differences": differences(table.devices),
    }
    env = _environment(Path(templates_dir))
    markdown = out_dir / "report.md"
    markdown.write_text(env.get_template("report.md.j2").render(**context), encoding="utf-8")
    html = out_dir / "report.html"
    html.write_text(env.get_template("report.html.j2").render(**context), encoding="utf-8")
    return ReportPaths(out_dir=out_dir, markdown=markdown, html=html,
                       csv=write_csv(table, out_dir / "results.csv"),
                       json=write_json(table, out_dir / "results.json"), plots=plots,
                       variants_csv=write_variants_csv(variants, out_dir / "variants.csv"),
                       variants_json=write_variants_json(variants, out_dir / "variants.json"))


def render_report(db: ResultsDB, run_ids: Sequence[str], out_dir: Path, *, baseline_run: str | None = None,
                  regression_threshold: float = 0.10, accuracy_metric: str | None = None,
                  templates_dir: Path = TEMPLATES_DIR) -> ReportPaths:
    table = build_table(db, run_ids, baseline_run=baseline_run, regression_threshold=regression_threshold,
                        accuracy_metric=accuracy_metric)
    return render_table(table, out_dir, templates_dir=templates_dir, variants=build_variant_table(db, table))
