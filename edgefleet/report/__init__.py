"""Benchmark reports: markdown, HTML, CSV, JSON, PNG plots and a terminal table from the results DB."""
from edgefleet.report.render import ReportPaths, render_report, render_table
from edgefleet.report.tables import ReportRow, ReportTable, build_table, rich_table

__all__ = ["ReportPaths", "ReportRow", "ReportTable", "build_table", "render_report", "render_table", "rich_table"]
