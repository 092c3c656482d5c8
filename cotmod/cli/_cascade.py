"""``cotmod classifier cascade``: choose a classifier → LLM cascade's bands on a golden set."""

from __future__ import annotations

import json

import click

from ._app import CONTEXT, EXIT_UNDECIDED, FloatRange
from ._monitor import _scores_options, classifier


def _ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f" [{ci[0]:+.3f}, {ci[1]:+.3f}]"


@classifier.command("cascade", context_settings=CONTEXT)
@click.argument("scores", type=click.Path(exists=True, dir_okay=False))
@click.option("--verdicts", "-v", "verdicts_path", required=True, type=click.Path(exists=True, dir_okay=False), help="The LLM's verdicts on the same items (cotmod run output, or verdicts.jsonl of a cotmod eval run).")
@click.option("--map", "-m", "pairs", required=True, multiple=True, help="LABEL=POLICY (repeatable): the classifier label that routes the policy.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Cascade file to write (for cotmod run --cascade).")
@click.option("--max-llm-share", type=FloatRange(0, 1), default=0.2, show_default=True, help="At most this share of the items goes to the LLM.")
@click.option("--max-f1-loss", type=FloatRange(0, 1), default=0.01, show_default=True, help="At most this F1 loss against LLM-only (on the tune part).")
@click.option("--tune-share", type=FloatRange(0, 1, min_open=True, max_open=True), default=0.5, show_default=True, help="Share of the items the bands are chosen on; the rest reports them.")
@click.option("--action", type=click.Choice(["label", "limit_reach", "age_restrict", "remove", "remove_and_report"]), default="remove", show_default=True, help="Action of a classifier enforcement.")
@click.option("--seed", type=click.IntRange(min=0), default=2026, show_default=True, help="Split and bootstrap seed.")
@_scores_options
@click.option("--json", "as_json", is_flag=True)
def classifier_cascade(
    scores: str,
    verdicts_path: str,
    pairs: tuple[str, ...],
    output: str | None,
    max_llm_share: float,
    max_f1_loss: float,
    tune_share: float,
    action: str,
    seed: int,
    labels: tuple[str, ...],
    strata: tuple[str, ...],
    id_field: str,
    time_field: str,
    fmt: str | None,
    as_json: bool,
) -> None:
    """Choose the score bands of a classifier → LLM cascade per policy, from a golden set.

    SCORES: the classifier's score log with ground truth (label_LABEL) for the items the LLM
    judged in --verdicts (joined by id). The items are split (--seed): the bands are chosen on
    the tune part (best F1 sending at most --max-llm-share to the LLM, losing at most
    --max-f1-loss against LLM-only) and reported on the rest against LLM-only and
    classifier-only, with paired bootstrap 95% CIs. Rows without ground truth are left out
    (counted). Exit 1 when the target is not met, or when items of SCORES have no verdict (left
    out, listed on stderr).

    \b
    Example:
      cotmod classifier cascade scores.jsonl -v runs/llm/verdicts.jsonl -m spam=spam_scams -o cascade.yaml
      cotmod run posts.jsonl -o verdicts.jsonl --cascade cascade.yaml
    """
    from ..classifiers._cascade import choose_cascade, read_llm_decisions, write_cascade
    from ..classifiers._scores import read_scores
    from ._monitor import _pairs

    mapping = _pairs(pairs, "--map", "LABEL=POLICY")
    wanted = list(labels) or list(mapping)
    log = read_scores(scores, labels=wanted, strata=strata, id_field=id_field, time_field=time_field, fmt=fmt)
    reports = []
    for label, policy in mapping.items():
        llm, version = read_llm_decisions(verdicts_path, policy)
        reports.append(
            choose_cascade(
                log, llm, policy=policy, label=label, max_llm_share=max_llm_share, max_f1_loss=max_f1_loss,
                tune_share=tune_share, seed=seed, policy_version=version,
            )
        )
    if output:
        write_cascade(reports, output, action=action)
    met = all(r.target_met for r in reports)
    if as_json:
        click.echo(json.dumps([r.model_dump(mode="json") for r in reports], indent=2))
    else:
        for r in reports:
            c = r.chosen
            hi = "never" if c.action_at is None else f">= {c.action_at:.4f}"
            click.echo(
                f"{r.label} -> {r.policy}: allow below {c.allow_below:.4f}, enforce {hi}; chosen on {r.tune_items} items, "
                f"reported on {r.test_items}{'' if r.target_met else ' (target NOT met: best F1 within the LLM share)'}"
            )
            click.echo(
                f"  cascade         F1 {c.f1:.3f}  LLM share {c.llm_share:.1%}  (P {_f(c.precision)}, R {_f(c.recall)})"
            )
            click.echo(f"  LLM only        F1 {r.llm_only.f1:.3f}  LLM share 100%   dF1 cascade-LLM {r.delta_f1_vs_llm:+.3f}{_ci(r.delta_f1_vs_llm_ci)}")
            click.echo(
                f"  classifier only F1 {r.classifier_only.f1:.3f}  at {r.classifier_threshold:.4f}  dF1 cascade-classifier "
                f"{r.delta_f1_vs_classifier:+.3f}{_ci(r.delta_f1_vs_classifier_ci)}"
            )
            skipped = [f"{n} {what}" for n, what in ((r.no_truth, "without ground truth"), (r.no_verdict, "without a verdict")) if n]
            if skipped or r.llm_errors:
                click.echo(f"  left out: {', '.join(skipped) or 'none'}; error verdicts counted as not flagged: {r.llm_errors}")
        if output:
            click.echo(f"wrote {output}")
    for r in reports:
        if r.no_verdict:  # items the LLM did not decide (failed, dead-lettered, another run): not all decided
            click.echo(
                f"{scores}: {r.no_verdict} item(s) with ground truth have no verdict for {r.policy} in {verdicts_path}: left out, "
                f"the bands are chosen and reported on the other {r.items} (judge them too, or give the judged items' scores only)",
                err=True,
            )
        if r.no_truth:  # by design: a score log may hold rows without ground truth
            click.echo(f"{scores}: {r.no_truth} row(s) without ground truth for {r.label}: left out", err=True)
    if not met or any(r.no_verdict for r in reports):
        click.get_current_context().exit(EXIT_UNDECIDED)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"

