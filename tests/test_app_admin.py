"""The admin pages (AppTest), each read back through the store: overview, agreement, reviewers, queue, models and
runs, export, settings, audit log."""

import duckdb
import pytest

from store.agreement import list_gold
from store.audit import list_events
from store.judgments import NewJudgment, add_judgment
from store.models import add_model
from store.runs import finish_run, start_run, update_run
from store.settings import get_settings
from store.users import add_user, get_user, login
from tests.test_app_login import PAGES, app, button, log_in, texts
from tests.test_queue import seed_comparisons


@pytest.fixture
def admin(workspace, monkeypatch):
    add_user(workspace.db, "adam", "admin", "adam's password", actor="test")
    ids = seed_comparisons(workspace.db, 3, k=2, required=2)
    con = duckdb.connect(str(workspace.db))
    resp = dict(con.execute("SELECT id, response_ids FROM comparisons").fetchall())
    con.close()
    for cid in ids:  # two imported reviewers who agree on everything but the last comparison
        a, b = resp[cid]
        add_judgment(workspace.db, NewJudgment(cid, "imp1", f"k1:{cid}", ranking=[[a], [b]], time_spent_ms=4000,
                                               source="import"))
        flip = cid == ids[-1]
        add_judgment(workspace.db, NewJudgment(cid, "imp2", f"k2:{cid}", ranking=[[b], [a]] if flip else [[a], [b]],
                                               source="import"))
    at = log_in(app(workspace, monkeypatch), "adam", "adam's password")
    return workspace, at, ids


def _open(at, page):
    at.switch_page(str(PAGES / f"{page}.py")).run()
    assert not at.exception, at.exception
    return at


def test_overview_counts(admin):
    ws, at, _ = admin
    _open(at, "overview")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Comparisons"] == "3" and metrics["Complete"] == "3" and metrics["Judgments"] == "6"


def test_agreement_figures(admin):
    ws, at, _ = admin
    _open(at, "agreement")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Comparisons with 2+ reviewers"] == "3"
    assert metrics["Pairwise agreement"] == "0.667"


def test_reviewers_add_deactivate_reset(admin):
    ws, at, _ = admin
    _open(at, "reviewers")
    at.text_input(key="new_name").input("nina")
    at.text_input(key="new_pw").input("nina's password")
    at.text_input(key="new_pw2").input("nina's password")
    button(at, "Add account").click().run()
    assert "Added nina." in texts(at)
    assert get_user(ws.db, "nina").role == "reviewer"
    at.selectbox(key="deactivate_name").select("nina")
    button(at, "Deactivate").click().run()
    assert not get_user(ws.db, "nina").active
    at.selectbox(key="reset_name").select("nina")
    at.text_input(key="reset_pw").input("a new password")
    button(at, "Reset").click().run()
    assert get_user(ws.db, "nina").active and login(ws.db, "nina", "a new password").user
    actions = [e["action"] for e in list_events(ws.db, actor="adam")]
    assert {"user.add", "user.deactivate", "user.reset"} <= set(actions)


def test_queue_sets_n_priority_and_gold(admin):
    ws, at, ids = admin
    _open(at, "queue")
    at.number_input(key="steer_n").set_value(3)
    button(at, "Set N").click().run()
    con = duckdb.connect(str(ws.db))
    assert con.execute("SELECT DISTINCT required_reviewers FROM comparisons").fetchall() == [(3,)]
    resp = con.execute("SELECT response_ids FROM comparisons WHERE id = ?", [ids[0]]).fetchone()[0]
    con.close()
    assert get_settings(ws.db)["required_reviewers"] == 3
    at.number_input(key="steer_priority").set_value(2.5)
    at.text_input(key="steer_ids").input(str(ids[1]))
    button(at, "Set priority").click().run()
    assert "Priority 2.5 on 1 comparisons." in texts(at)
    at.number_input(key="gold_id").set_value(ids[0])
    at.text_input(key="gold_answer").input(f"{resp[1]} > {resp[0]}")
    button(at, "Save gold answer").click().run()
    assert [g["comparison_id"] for g in list_gold(ws.db)] == [ids[0]]
    at.text_input(key="gold_answer").input("12 > nonsense")
    button(at, "Save gold answer").click().run()
    assert "Not saved" in texts(at)


def test_models_and_runs(admin):
    ws, at, _ = admin
    run = start_run(ws.db, "reward", {"lr": 1e-4})
    finish_run(ws.db, run, "succeeded", metrics={"accuracy": 0.71})
    add_model(ws.db, "rm-1", "reward", base="tiny", run_id=run, metrics={"accuracy": 0.71})
    _open(at, "runs")
    shown = at.dataframe[0].value
    assert list(shown["name"]) == ["rm-1"] and "metric.accuracy" in shown.columns
    assert list(at.dataframe[1].value["status"]) == ["succeeded"]


def test_runs_page_shows_evaluation_reports_without_loading_remote_images(admin, tmp_path):
    from reward.report import write_report

    ws, at, _ = admin
    run = start_run(ws.db, "reward-eval", {})
    folder = ws.runs_dir / f"eval-{run}"
    metrics = {"pairs": 4, "accuracy": 0.75, "accuracy_low": 0.3, "accuracy_high": 0.95, "length_longer_accuracy": 0.5,
               "length_shorter_accuracy": 0.5, "mean_gap": 0.4, "ece": 0.1}
    bins = [{"low": 0.5, "high": 0.6, "count": 4, "confidence": 0.55, "accuracy": 0.75}]
    write_report(folder, "rm-1", "held-out prompts", metrics, [], [], bins)
    with open(folder / "report.md", "a", encoding="utf-8") as f:
        f.write("\nA sample: ![tracker](http://evil.example/pixel.png)\n")
    update_run(ws.db, run, output_path=str(folder))
    finish_run(ws.db, run, "succeeded")
    outside = start_run(ws.db, "reward-eval", {})  # a report folder outside the workspace is never read
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "report.md").write_text("# secret", encoding="utf-8")
    update_run(ws.db, outside, output_path=str(tmp_path / "elsewhere"))
    finish_run(ws.db, outside, "succeeded")
    _open(at, "runs")
    assert at.selectbox(key="report_choice").options == [f"run {run}: reward-eval (succeeded)"]
    shown = "\n".join(m.value for m in at.markdown)
    assert "Reward model `rm-1`: evaluation" in shown and "75.0%" in shown
    assert "[image: tracker]" in shown and "evil.example" not in shown and "secret" not in shown
    assert [i.proto.imgs[0].caption for i in at.get("image")] == ["accuracy.png", "reliability.png"]


def test_export_prepares_a_download(admin):
    ws, at, _ = admin
    _open(at, "export")
    if "not available" in texts(at):
        pytest.skip("store.export is not in this tree yet")
    button(at, "Prepare download").click().run()
    assert not at.exception, at.exception
    name, data, manifest = at.session_state["export_blob"]
    assert name == "pairs.jsonl" and len(data.splitlines()) == 6  # 3 comparisons x 2 reviewers, one pair each
    assert [e["action"] for e in list_events(ws.db, action="export")] == ["export.download"]


def test_settings_guidelines_reach_reviewers(admin, monkeypatch):
    ws, at, _ = admin
    _open(at, "settings")
    at.text_area(key="setting:guidelines").input("# Rules\nPrefer correct answers. ![logo](https://tracker.example/p.gif)")
    button(at, "Save guidelines").click().run()
    at.number_input(key="setting:gold_rate").set_value(0.1)
    next(b for b in at.button if b.key == "save:gold_rate").click().run()
    s = get_settings(ws.db)
    assert s["guidelines"].startswith("# Rules") and s["gold_rate"] == 0.1
    add_user(ws.db, "rita", "reviewer", "rita's password", actor="test")
    reviewer = log_in(app(ws, monkeypatch), "rita", "rita's password")
    reviewer.switch_page(str(PAGES / "guidelines.py")).run()
    shown = reviewer.markdown[0].value
    assert "Prefer correct answers." in shown and "[image: logo]" in shown and "tracker.example" not in shown


def test_audit_log_lists_and_filters(admin):
    ws, at, _ = admin
    _open(at, "audit")
    frame = at.dataframe[0].value
    assert "login" in set(frame["action"]) and "user.add" in set(frame["action"])
    at.text_input(key="audit_action").input("login").run()
    assert set(at.dataframe[0].value["action"]) == {"login"}


def test_queue_imports_prompts(admin):
    ws, at, _ = admin
    _open(at, "queue")
    if "not available" in texts(at):
        pytest.skip("store.imports is not in this tree yet")
    at.file_uploader(key="prompt_file").set_value(
        ("new.jsonl", b'{"prompt": "Say hi."}\n{"prompt": "Count to three."}\n', "application/json")).run()
    button(at, "Import").click().run()
    assert not at.exception, at.exception
    assert "prompts added 2" in texts(at)
    con = duckdb.connect(str(ws.db))
    assert con.execute("SELECT count(*) FROM prompts WHERE text IN ('Say hi.', 'Count to three.')").fetchone() == (2,)
    con.close()
    assert [e["details"]["prompts_added"] for e in list_events(ws.db, action="import.prompts")] == [2]
