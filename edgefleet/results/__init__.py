"""The results store: the agent's JSONL lines, validated, in SQLite."""
from edgefleet.results.db import AccuracyRecord, CellRecord, ResultsDB, RunRecord
from edgefleet.results.ingest import IngestSummary, ingest_log, ingest_run_dir, ingest_status
from edgefleet.results.schema import ResultLine, RunStatus

__all__ = [
    "AccuracyRecord", "CellRecord", "IngestSummary", "ResultLine", "ResultsDB", "RunRecord", "RunStatus",
    "ingest_log", "ingest_run_dir", "ingest_status",
]
