"""Auditor mode: a stronger model audits at-scale decisions (issue 13).

Bring production decisions (a cotmod run output, or any system's decisions file), plan a seeded
stratified audit sample (:func:`make_plan`), re-judge it with the auditor through the batch
runner (:func:`run_audit_async`), and report agreement and design-weighted estimates of
production's precision, recall, flag rate and prevalence with 95% CIs (:func:`build_report`);
human labels on the disagreement queue and a control sample sharpen them by prediction-powered
inference. numpy only (no scipy).
"""

from ._adjudicate import HumanLabel, append_golden, control_sample, export_task, read_labels
from ._decisions import DecisionsFile, ProductionDecision, ProductionItem, load_decisions
from ._estimate import (
    Design,
    Interval,
    cohen_kappa,
    kappa_ci,
    ppi_mean,
    ppi_ratio,
    stratified_mean,
    stratified_ratio,
)
from ._html import audit_html, write_audit_html
from ._plan import AuditPlan, PlanItem, Stratum, make_plan, read_plan, sample_size
from ._report import (
    AuditReport,
    Disagreement,
    PolicyAudit,
    append_history,
    build_report,
    read_history,
)
from ._run import check_audit_output, read_audit, run_audit, run_audit_async

__all__ = [
    "AuditPlan",
    "AuditReport",
    "DecisionsFile",
    "Design",
    "Disagreement",
    "HumanLabel",
    "Interval",
    "PlanItem",
    "PolicyAudit",
    "ProductionDecision",
    "ProductionItem",
    "Stratum",
    "append_golden",
    "append_history",
    "audit_html",
    "build_report",
    "check_audit_output",
    "cohen_kappa",
    "control_sample",
    "export_task",
    "kappa_ci",
    "load_decisions",
    "make_plan",
    "ppi_mean",
    "ppi_ratio",
    "read_audit",
    "read_history",
    "read_labels",
    "read_plan",
    "run_audit",
    "run_audit_async",
    "sample_size",
    "stratified_mean",
    "stratified_ratio",
    "write_audit_html",
]
