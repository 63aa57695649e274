"""`rankloop eval influence`: each reviewer's influence on the reward model (leave-one-reviewer-out accuracy of the
probe, reward/influence.py), recorded as a run the agreement page shows. It joins the shared `eval` group."""

from __future__ import annotations

import click

from rankloop.commands.common import echo_json, guarded, workspace_option
from rankloop.commands.reward import eval_group
from rankloop.workspace import Workspace


@eval_group.command("influence")
@click.argument("model", required=False)
@click.option("--device", default=None, help="cpu, cuda, cuda:N or mps, for the features.  [default: the model's "
              "training device setting]")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show the embedding progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@workspace_option
def influence_command(ws: Workspace, model: str | None, device: str | None, progress: bool, as_json: bool) -> None:
    """Refit a probe reward model (default: the newest reward model) without each reviewer's pairs and report how
    its held-out accuracy changes (positive gain: better without them); shown on the Agreement page."""
    from reward.influence import reviewer_influence

    result = guarded(reviewer_influence, ws, model, device=device, progress=progress and not as_json)
    if as_json:
        echo_json({"run_id": result.run_id, "report_path": result.report_path, **result.report})
        return
    r = result.report
    click.echo(f"{result.model}: held-out accuracy {r['accuracy']:.3f} on {r['eval_pairs']} pairs with all "
               f"{len(r['reviewers'])} reviewers ({r['train_pairs']} train pairs; features "
               f"{'reused' if result.features_reused else 'computed'}, {result.seconds:.1f}s, run {result.run_id})")
    for row in r["reviewers"]:
        gain = "n/a (their pairs are all there is)" if row["gain"] is None else f"{row['gain']:+.3f}"
        click.echo(f"  without {row['reviewer']} ({row['train_pairs']} pairs): gain {gain}")
    click.echo(f"report: {result.report_path}")
