"""The report stage: report.json, the table and the chart, from every marker."""

from __future__ import annotations

import os

from ..report import build_report
from .base import Run, one_task, stage


@stage(
    "report",
    count=one_task,
    after=("tokens-metadata",),
    config=lambda run, cfg: os.urandom(8).hex(),  # always re-run: it reads every marker
)
def task_report(run: Run, _: int, prog) -> dict:
    rep = build_report(run)
    return {"kept_docs": rep["kept_docs"], "tokens": rep["tokens"]}
