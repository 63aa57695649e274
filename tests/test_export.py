"""Exports: each kind and style, the manifest and its hash, filters, no fake preferences, paths and suffixes."""

import hashlib
import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from rankloop.commands.export import export_group
from store.export import export
from store.pairs import PairFilter
from store.rows import render_transcript
from tests.preferences import Seed

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye?"}]
CHAT_TEXT = "\n\nSystem: Be brief.\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye?\n\nAssistant:"


@pytest.fixture
def judged(workspace):
    seed = Seed().comparison("q1", "Name a colour.", {"a": "red", "b": "blue", "c": "green", "d": "the"},
                             models={"a": "policy-v1", "b": "policy-v1", "c": "policy-v0", "d": "policy-v0"})
    seed.judge("q1", "ana", "a>b=c>d").judge("q1", "bo", "b>a>c>d")
    seed.judge("q1", "cy", all_bad=True, edited_text="Red is a colour.").judge("q1", "dee", skipped=True)
    seed.comparison("q2", CHAT, {"x": "Goodbye!", "y": "What?"})
    seed.judge("q2", "ana", "x>y").judge("q2", "bo", "x=y")
    seed.comparison("q3", "Held out.", {"a": "yes", "b": "no"}, round=1, split="eval")
    seed.judge("q3", "ana", "a>b", edited_text="Better answer.")
    seed.write(workspace.db)
    return workspace


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _manifest(path):
    return json.loads(path.with_name(path.name + ".manifest.json").read_text(encoding="utf-8"))


def test_render_transcript_is_hh_style():
    assert render_transcript(CHAT) == CHAT_TEXT
    assert render_transcript([{"role": "user", "content": "x"}]) == "\n\nHuman: x\n\nAssistant:"


@pytest.mark.both_backends
def test_pairs_standard_jsonl_and_its_manifest(judged, tmp_path):
    out = tmp_path / "pairs.jsonl"
    manifest = export(judged.db, "pairs", out)
    rows = _jsonl(out)
    assert len(rows) == 19 and all(list(r) == ["prompt", "chosen", "rejected", "margin"] for r in rows)
    assert {"prompt": "Name a colour.", "chosen": "red", "rejected": "the", "margin": 2.0} in rows
    # Edited answers beat every candidate: cy's (an "all bad") by 1 group, ana's by 1 + the candidate's group.
    assert {"prompt": "Name a colour.", "chosen": "Red is a colour.", "rejected": "the", "margin": 1.0} in rows
    assert {"prompt": "Held out.", "chosen": "Better answer.", "rejected": "no", "margin": 2.0} in rows
    assert {"prompt": CHAT_TEXT, "chosen": "Goodbye!", "rejected": "What?", "margin": 1.0} in rows
    assert {"prompt": "Name a colour.", "chosen": "blue", "rejected": "the", "margin": 3.0} in rows
    # bo tied x and y: only ana's pair; ana tied blue and green: only bo's pair between them.
    assert sum({r["chosen"], r["rejected"]} == {"blue", "green"} for r in rows) == 1
    assert sum({r["chosen"], r["rejected"]} == {"Goodbye!", "What?"} for r in rows) == 1
    assert manifest == _manifest(out)
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert manifest["counts"] == {"rows": 19, "comparisons": 3, "judgments": 5, "reviewers": 3,
                                  "by_source": {"edit": 6, "ranking": 13},
                                  "left_out": {"all_bad_judgments": 0, "skipped_judgments": 1, "tied_pairs": 2}}
    assert (manifest["kind"], manifest["style"], manifest["aggregate"], manifest["format"]) == (
        "pairs", "standard", False, "jsonl")
    assert manifest["schema_version"] >= 3 and manifest["rankloop_version"] == "0.1.0"
    assert manifest["filters"] == {"round": [], "model": [], "reviewer": [], "min_agreement": None, "split": [],
                                   "edited_first": True, "exclude_flagged": False}
    assert manifest["columns"] == ["prompt", "chosen", "rejected", "margin"] and manifest["created_at"]
    assert manifest["snapshot"]["max_judgment_id"] == 7 and len(manifest["snapshot"]["judgment_ids_sha256"]) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl", "pairs.jsonl.manifest.json", "ws"]


@pytest.mark.both_backends
def test_pairs_conversational_parquet_with_meta(judged, tmp_path):
    out = tmp_path / "pairs.parquet"
    export(judged.db, "pairs", out, style="conversational", with_meta=True, with_margin=False)
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 19
    assert set(rows[0]) == {"prompt", "chosen", "rejected", "reviewer", "comparison_id", "judgment_id", "round",
                            "origin"}
    edit = next(r for r in rows if r["chosen"] == [{"role": "assistant", "content": "Red is a colour."}])
    assert (edit["reviewer"], edit["origin"]) == ("cy", "edit") and {r["origin"] for r in rows} == {"edit", "ranking"}
    chat = next(r for r in rows if r["chosen"] == [{"role": "assistant", "content": "Goodbye!"}])
    assert chat["prompt"] == CHAT and chat["rejected"] == [{"role": "assistant", "content": "What?"}]
    assert (chat["reviewer"], chat["round"]) == ("ana", 0)
    assert {r["reviewer"] for r in rows} == {"ana", "bo", "cy"}
    assert _manifest(out)["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.mark.both_backends
def test_implicit_styles_put_the_prompt_inside_the_answers(judged, tmp_path):
    export(judged.db, "pairs", tmp_path / "i.jsonl", style="implicit", with_margin=False)
    export(judged.db, "pairs", tmp_path / "ic.jsonl", style="implicit-conversational", with_margin=False)
    text, conv = _jsonl(tmp_path / "i.jsonl"), _jsonl(tmp_path / "ic.jsonl")
    assert {"chosen": CHAT_TEXT + "Goodbye!", "rejected": CHAT_TEXT + "What?"} in text
    assert {"chosen": CHAT + [{"role": "assistant", "content": "Goodbye!"}],
            "rejected": CHAT + [{"role": "assistant", "content": "What?"}]} in conv
    assert len(text) == len(conv) == 19


@pytest.mark.both_backends
def test_aggregated_pairs_with_agreement_filter(judged, tmp_path):
    out = tmp_path / "agg.jsonl"
    manifest = export(judged.db, "pairs", out, aggregate=True, with_meta=True)
    rows = {(r["prompt"], r["chosen"], r["rejected"]): (r["margin"], r["agreement"], r["n_reviewers"])
            for r in _jsonl(out)}
    q = "Name a colour."
    assert rows == {
        (q, "red", "green"): (1.0, 1.0, 2), (q, "red", "the"): (2.0, 1.0, 2), (q, "blue", "green"): (2.0, 0.5, 2),
        (q, "blue", "the"): (2.0, 1.0, 2), (q, "green", "the"): (1.0, 1.0, 2),
        (CHAT_TEXT, "Goodbye!", "What?"): (1.0, 0.5, 2), ("Held out.", "yes", "no"): (1.0, 1.0, 1),
        **{(q, "Red is a colour.", x): (1.0, 1.0, 1) for x in ("red", "blue", "green", "the")},
        ("Held out.", "Better answer.", "yes"): (1.0, 1.0, 1), ("Held out.", "Better answer.", "no"): (2.0, 1.0, 1),
    }  # red vs blue: ana one way, bo the other -> no pair; each edit over every candidate
    assert manifest["counts"]["left_out"]["split_votes"] == 1
    strict = export(judged.db, "pairs", tmp_path / "strict.jsonl", aggregate=True,
                    filters=PairFilter(min_agreement=0.6))
    assert strict["counts"]["rows"] == 11 and strict["counts"]["left_out"]["below_min_agreement"] == 2
    assert strict["filters"]["min_agreement"] == 0.6


@pytest.mark.both_backends
def test_kto_per_reviewer_and_aggregated(judged, tmp_path):
    manifest = export(judged.db, "kto", tmp_path / "kto.jsonl", with_meta=True)
    rows = _jsonl(tmp_path / "kto.jsonl")
    got = sorted((r["reviewer"], r["completion"], r["label"]) for r in rows)
    assert got == sorted([
        ("ana", "red", True), ("ana", "the", False), ("bo", "blue", True), ("bo", "the", False),
        ("cy", "red", False), ("cy", "blue", False), ("cy", "green", False), ("cy", "the", False),
        ("ana", "Goodbye!", True), ("ana", "What?", False), ("ana", "yes", True), ("ana", "no", False),
        ("cy", "Red is a colour.", True), ("ana", "Better answer.", True),
    ])  # bo's all-tied q2 ranking gives nothing; dee skipped; edits are desirable
    assert manifest["counts"]["left_out"] == {"all_tied_rankings": 1, "middle_responses": 4, "skipped_judgments": 1}
    agg = export(judged.db, "kto", tmp_path / "kto-agg.parquet", aggregate=True, style="conversational")
    rows = pq.read_table(tmp_path / "kto-agg.parquet").to_pylist()
    got = sorted((r["completion"][0]["content"], r["label"]) for r in rows)
    assert got == sorted([("green", False), ("the", False), ("Goodbye!", True), ("What?", False), ("yes", True),
                          ("no", False), ("Red is a colour.", True), ("Better answer.", True)])
    # red and blue: one true and one false vote each
    assert agg["counts"]["left_out"]["split_votes"] == 2
    strict = export(judged.db, "kto", tmp_path / "kto-strict.jsonl", aggregate=True,
                    filters=PairFilter(min_agreement=0.6))
    assert sorted(r["completion"] for r in _jsonl(tmp_path / "kto-strict.jsonl")) == [
        "Better answer.", "Red is a colour.", "no", "the", "yes"]
    assert strict["counts"]["rows"] == 5
    with pytest.raises(ValueError, match="explicit prompt"):
        export(judged.db, "kto", tmp_path / "x.jsonl", style="implicit")
    with pytest.raises(ValueError, match="aggregated"):
        export(judged.db, "kto", tmp_path / "x.jsonl", filters=PairFilter(min_agreement=0.5))


@pytest.mark.both_backends
def test_sft_from_edits_and_single_top_responses(judged, tmp_path):
    export(judged.db, "sft", tmp_path / "sft.jsonl", with_meta=True)
    got = sorted((r["source"], r["reviewer"], r["prompt"], r["completion"]) for r in _jsonl(tmp_path / "sft.jsonl"))
    assert got == sorted([
        ("edit", "cy", "Name a colour.", "Red is a colour."), ("top", "ana", "Name a colour.", "red"),
        ("top", "bo", "Name a colour.", "blue"), ("top", "ana", CHAT_TEXT, "Goodbye!"),
        ("edit", "ana", "Held out.", "Better answer."), ("top", "ana", "Held out.", "yes"),
    ])  # cy's "all bad" gives its edit only; bo's tied top on q2 gives nothing
    edits = export(judged.db, "sft", tmp_path / "edits.jsonl", sft_source="edits")
    assert edits["counts"]["rows"] == 2 and edits["sft_source"] == "edits"
    assert export(judged.db, "sft", tmp_path / "top.jsonl", sft_source="top")["counts"]["rows"] == 4
    export(judged.db, "sft", tmp_path / "conv.jsonl", style="conversational", sft_source="edits")
    assert _jsonl(tmp_path / "conv.jsonl")[0] == {"messages": [
        {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red is a colour."}]}
    export(judged.db, "sft", tmp_path / "text.jsonl", style="implicit", sft_source="edits")
    assert _jsonl(tmp_path / "text.jsonl")[1] == {"text": "Held out.Better answer."}
    agg = export(judged.db, "sft", tmp_path / "agg.jsonl", aggregate=True)
    assert sorted(r["completion"] for r in _jsonl(tmp_path / "agg.jsonl")) == ["Better answer.", "Red is a colour.",
                                                                              "yes"]
    assert agg["counts"]["left_out"]["no_majority_top"] == 2


@pytest.mark.both_backends
def test_filters_reach_the_export_and_the_manifest(judged, tmp_path):
    m = export(judged.db, "pairs", tmp_path / "r1.jsonl", filters=PairFilter(round=1))
    assert [r["prompt"] for r in _jsonl(tmp_path / "r1.jsonl")] == ["Held out."] * 3 and m["filters"]["round"] == [1]
    m = export(judged.db, "pairs", tmp_path / "train.jsonl", filters=PairFilter(split="train", reviewer="bo"))
    assert m["counts"]["rows"] == 6 and m["counts"]["reviewers"] == 1
    m = export(judged.db, "pairs", tmp_path / "v0.jsonl", filters=PairFilter(model="policy-v0"))
    rows = _jsonl(tmp_path / "v0.jsonl")
    assert m["counts"]["rows"] == 11 and all({"green", "the"} & {r["chosen"], r["rejected"]} for r in rows)


@pytest.mark.both_backends
def test_ties_all_bad_and_skips_never_become_preferences(workspace, tmp_path):
    seed = Seed().comparison("q", "Anything.", {"a": "one", "b": "two", "c": "three"})
    seed.judge("q", "ana", "a=b=c").judge("q", "bo", all_bad=True).judge("q", "cy", skipped=True)
    seed.judge("q", "dee", "c>b>a", all_bad=True)
    seed.write(workspace.db)
    for aggregate in (False, True):
        m = export(workspace.db, "pairs", tmp_path / f"p{aggregate}.jsonl", aggregate=aggregate)
        assert m["counts"]["rows"] == 0 and (tmp_path / f"p{aggregate}.jsonl").read_text() == ""
    m = export(workspace.db, "pairs", tmp_path / "p.parquet")
    assert pq.read_table(tmp_path / "p.parquet").num_rows == 0 and m["counts"]["rows"] == 0
    assert m["counts"]["left_out"] == {"all_bad_judgments": 2, "skipped_judgments": 1, "tied_pairs": 3}
    assert export(workspace.db, "sft", tmp_path / "s.jsonl", sft_source="top")["counts"]["rows"] == 0
    kto = export(workspace.db, "kto", tmp_path / "k.jsonl")
    assert {r["label"] for r in _jsonl(tmp_path / "k.jsonl")} == {False} and kto["counts"]["rows"] == 6


@pytest.mark.parametrize("name,kwargs,error,message", [
    ("out.csv", {}, ValueError, "use .jsonl or .parquet"),
    ("out", {}, ValueError, "use .jsonl or .parquet"),
    ("missing/out.jsonl", {}, FileNotFoundError, "does not exist"),
    ("out.jsonl", {"style": "fancy"}, ValueError, "style must be"),
    ("out.jsonl", {"kind": "dpo"}, ValueError, "kind must be"),
    ("out.jsonl", {"kind": "sft", "sft_source": "gold"}, ValueError, "sft_source"),
])
def test_bad_arguments_leave_no_file(judged, tmp_path, name, kwargs, error, message):
    kwargs = dict(kwargs)  # the parameter dict is shared by both backends' runs
    kind = kwargs.pop("kind", "pairs")
    with pytest.raises(error, match=message):
        export(judged.db, kind, tmp_path / name, **kwargs)
    assert [p.name for p in tmp_path.iterdir()] == ["ws"]


@pytest.mark.both_backends
def test_existing_output_is_kept_unless_overwrite(judged, tmp_path):
    out = tmp_path / "pairs.jsonl"
    out.write_text("keep me\n")
    with pytest.raises(ValueError, match="already exists"):
        export(judged.db, "pairs", out)
    assert out.read_text() == "keep me\n" and not (tmp_path / "pairs.jsonl.manifest.json").exists()
    export(judged.db, "pairs", out, overwrite=True)
    assert len(_jsonl(out)) == 19
    out.with_name("pairs.jsonl.manifest.json").unlink()
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        export(judged.db, "pairs", tmp_path / "dir.jsonl", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.jsonl", "pairs.jsonl", "ws"]


@pytest.mark.both_backends
def test_cli_export_commands(judged, tmp_path):
    runner = CliRunner()
    out = tmp_path / "pairs.jsonl"
    res = runner.invoke(export_group, ["pairs", "-w", str(judged.root), "--out", str(out), "--reviewer", "ana",
                                       "--round", "0", "--with-meta"])
    assert res.exit_code == 0, res.output
    assert f"wrote 6 pairs rows to {out}" in res.output and "pairs.jsonl.manifest.json" in res.output
    assert {r["reviewer"] for r in _jsonl(out)} == {"ana"}
    assert _manifest(out)["filters"]["reviewer"] == ["ana"]
    res = runner.invoke(export_group, ["pairs", "-w", str(judged.root), "--out", str(out)])
    assert res.exit_code == 1 and "already exists" in res.output
    res = runner.invoke(export_group, ["kto", "-w", str(judged.root), "--out", str(tmp_path / "k.parquet"),
                                       "--aggregate", "--min-agreement", "0.6", "--style", "conversational"])
    assert res.exit_code == 0, res.output
    assert pq.read_table(tmp_path / "k.parquet").num_rows == 5  # 3 labels agreed on, 2 edits
    res = runner.invoke(export_group, ["sft", "-w", str(judged.root), "--out", str(tmp_path / "s.jsonl"),
                                       "--source", "edits"])
    assert res.exit_code == 0 and len(_jsonl(tmp_path / "s.jsonl")) == 2
    res = runner.invoke(export_group, ["pairs", "-w", str(judged.root), "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 1 and "use .jsonl or .parquet" in res.output and not (tmp_path / "p.csv").exists()
    res = runner.invoke(export_group, ["pairs", "-w", str(judged.root), "--out", str(tmp_path / "p.jsonl"),
                                       "--min-agreement", "2"])
    assert res.exit_code == 2


def test_the_same_data_exports_byte_for_byte_the_same_from_duckdb_and_postgresql(pg_databases, tmp_path):
    """The issue's promise: whatever backend holds the judgments, the training files are identical (rows, their
    order, floats, JSON text); the manifests differ only in their creation time."""
    from rankloop.workspace import init_workspace
    from store.imports import import_pairs
    from tests.conftest import FIXTURES

    url = pg_databases.create()
    try:
        files = {}
        for backend, database in (("duckdb", None), ("postgresql", url)):
            ws = init_workspace(tmp_path / backend, database=database)
            seed = Seed().comparison("q1", "Name a colour. ¿Qué?", {"a": "red", "b": "blue 🙂", "c": "green",
                                                                    "d": "the"})
            seed.judge("q1", "ana", "a>b=c>d").judge("q1", "bo", "b>a>c>d").judge("q1", "cy", "c>a>d>b")
            seed.judge("q1", "dee", all_bad=True, edited_text="Red is a colour.").judge("q1", "eve", skipped=True)
            seed.comparison("q2", CHAT, {"x": "Goodbye!", "y": "What?", "z": "\u202eodd"}, round=1)
            seed.judge("q2", "ana", "x>y>z").judge("q2", "bo", "x=y>z").judge("q2", "cy", "y>x=z")
            seed.write(ws.db)
            for fixture in ("oasst_message_trees_first15.jsonl", "fastchat_arena_battles.SYNTHETIC.jsonl",
                            "argilla_v2_records_ranking.SYNTHETIC.jsonl"):
                import_pairs(ws.db, FIXTURES / fixture)
            for name, kind, kw in [
                ("pairs.jsonl", "pairs", {}),
                ("pairs-meta.jsonl", "pairs", {"style": "conversational", "with_meta": True}),
                ("pairs-agg.jsonl", "pairs", {"aggregate": True, "with_meta": True}),
                ("pairs-agreed.jsonl", "pairs", {"aggregate": True, "filters": PairFilter(min_agreement=0.6)}),
                ("pairs.parquet", "pairs", {"style": "implicit-conversational", "with_meta": True}),
                ("kto.jsonl", "kto", {"style": "conversational"}),
                ("kto-agg.jsonl", "kto", {"aggregate": True}),
                ("sft.jsonl", "sft", {}),
                ("sft.parquet", "sft", {"style": "conversational", "aggregate": True}),
            ]:
                out = tmp_path / f"{backend}-{name}"
                manifest = export(ws.db, kind, out, **kw)
                rows = pq.read_table(out).to_pylist() if out.suffix == ".parquet" else out.read_bytes()
                files[backend, name] = rows, {k: v for k, v in manifest.items() if k not in ("created_at", "file")}
        names = {name for _, name in files}
        assert len(names) == 9
        for name in sorted(names):
            duck, pg = files["duckdb", name], files["postgresql", name]
            assert duck[0] == pg[0], name
            assert duck[1] == pg[1], name
            assert duck[1]["counts"]["rows"] > 0, name
    finally:
        pg_databases.drop(url)
