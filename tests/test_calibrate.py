"""`rankloop simulate --calibrate`: people simulated with a known noise are recovered, the fit is a run row, and
`loop` takes the fitted values unless its flags say otherwise."""

from __future__ import annotations

import json
import random

import pytest

from tests.preferences import Seed

ORACLE = "tests.test_calibrate:score"
LETTERS = "abcd"


def score(prompt: str, response: str) -> float:
    """The oracle: each response carries its score as its last word."""
    return float(response.split()[-1])


def seed_people(db, noise: float, round: int, n: int = 120, people: tuple[str, ...] = ("ana", "bo", "cy"),
                model: str = "gumbel") -> None:
    """n comparisons of 4 responses (scores uniform in [0, 2]), each ranked by every person as a reviewer of `noise`
    (noise model `model`) would (seeds of their own, not the calibration's)."""
    from rankloop.simulate import rank_by_scores

    rng = random.Random(round)
    seed = Seed()
    for i in range(n):
        key = f"r{round}c{i}"
        values = [rng.uniform(0, 2) for _ in LETTERS]
        texts = {x: f"answer {x} {v:.4f}" for x, v in zip(LETTERS, values, strict=True)}
        seed.comparison(key, f"Question {round}.{i}?", texts, round=round)
        for who in people:
            groups = rank_by_scores(list(range(4)), values, noise, model, random.Random(f"people:{who}:{key}"))
            seed.judge(key, who, ">".join("=".join(LETTERS[i] for i in g) for g in groups))
    seed.write(db)


@pytest.mark.both_backends
def test_calibration_recovers_the_peoples_noise(workspace):
    from rankloop.simulate import SimulationConfig, calibrate, latest_calibration
    from store.runs import get_run

    seed_people(workspace.db, 0.25, round=0)
    seed_people(workspace.db, 0.75, round=1)
    fits = {r: calibrate(workspace, SimulationConfig(ORACLE, reviewers=3, round=r, seed=5)) for r in (0, 1)}
    # recovered within 20%: the other level (3x apart), or a fit two steps of the coarse grid (1.19x each) off,
    # would miss it (over five other draws of people, 0.25 fitted 0.23-0.26 and 0.75 fitted 0.68-0.89)
    assert fits[0].noise == pytest.approx(0.25, rel=0.2)
    assert fits[1].noise == pytest.approx(0.75, rel=0.2)
    for fit in fits.values():
        assert fit.comparisons == 120 and fit.people == 3
        assert fit.simulated_agreement == pytest.approx(fit.human_agreement, abs=0.03)
        assert fit.simulated_human_agreement == pytest.approx(fit.human_agreement, abs=0.03)
    assert fits[0].human_agreement > fits[1].human_agreement + 0.1  # the two levels differ in what people show
    newest = latest_calibration(workspace.db)
    assert newest["run_id"] == fits[1].run_id and newest["noise"] == fits[1].noise
    row = get_run(workspace.db, fits[1].run_id)
    assert row.kind == "simulate_calibrate" and row.status == "succeeded" and row.config["round"] == 1
    seed_people(workspace.db, 0.4, round=2, model="flip")  # flip: a random ranking with probability 0.4
    flip = calibrate(workspace, SimulationConfig(ORACLE, reviewers=3, noise_model="flip", round=2, seed=5))
    assert flip.noise == pytest.approx(0.4, abs=0.08) and flip.noise_model == "flip"


def test_calibration_without_people_fails_and_records_nothing(workspace):
    from rankloop.simulate import SimulationConfig, calibrate
    from store.runs import list_runs

    with pytest.raises(ValueError, match="two or more people ranked"):
        calibrate(workspace, SimulationConfig(ORACLE))
    assert list_runs(workspace.db) == []


def test_loop_takes_the_calibration_unless_asked_otherwise(workspace, monkeypatch):
    from click.testing import CliRunner

    from rankloop.cli import main
    from rankloop.loop_config import LoopConfig
    from rankloop.simulate import with_calibration

    seed_people(workspace.db, 0.6, round=0, n=60)
    base = LoopConfig(simulate=ORACLE, noise=0.05)
    assert with_calibration(workspace.db, base, {}) == (base, None)  # nothing fitted yet
    out = CliRunner().invoke(main, ["simulate", "--oracle", ORACLE, "--calibrate", "--json",
                                    "--workspace", str(workspace.root)])
    assert out.exit_code == 0, out.output
    fitted = json.loads(out.output)
    assert fitted["noise"] == pytest.approx(0.6, rel=0.3)
    config, used = with_calibration(workspace.db, base, {})
    assert (config.noise, config.spread, used["run_id"]) == (fitted["noise"], fitted["spread"], fitted["run_id"])
    config, _ = with_calibration(workspace.db, base, {"noise": 0.05})  # a flag wins; the spread is still fitted
    assert (config.noise, config.spread) == (0.05, fitted["spread"])
    assert with_calibration(workspace.db, base, {"noise_model": "flip"})[1] is None  # other units: not used
    assert _loop_noise(workspace, monkeypatch, "") == fitted["noise"]  # `rankloop loop` takes the fit
    assert _loop_noise(workspace, monkeypatch, "\n[loop]\nnoise = 0.05\n") == 0.05  # rankloop.toml's value wins
    from store.users import add_user
    from tests.test_app_login import PAGES, app, log_in

    add_user(workspace.db, "adam", "admin", "adam's password", actor="test")
    at = log_in(app(workspace, monkeypatch), "adam", "adam's password")
    at.switch_page(str(PAGES / "agreement.py")).run()
    assert not at.exception, at.exception
    shown = [c.value for c in at.caption if "calibrated" in c.value]
    assert len(shown) == 1 and f"run {fitted['run_id']}" in shown[0]  # the Agreement page names the fit
    refused = CliRunner().invoke(main, ["simulate", "--oracle", ORACLE, "--calibrate", "--noise", "0.2",
                                        "--workspace", str(workspace.root)])
    assert refused.exit_code != 0 and "drop --noise" in refused.output


def _loop_noise(workspace, monkeypatch, loop_table: str) -> float:
    """The noise `rankloop loop --simulate` starts its reviewers with, rankloop.toml ending with `loop_table`."""
    from click.testing import CliRunner

    import rankloop.loop as loop_module
    from rankloop.cli import main

    toml = workspace.root / "rankloop.toml"
    text = toml.read_text(encoding="utf-8")
    toml.write_text(text + loop_table, encoding="utf-8")
    seen = []
    monkeypatch.setattr(loop_module._Loop, "run", lambda self: seen.append(self.config.noise) or [{"policy": "p"}])
    monkeypatch.setattr(loop_module, "check_trainer_settings", lambda ws, config: None)
    monkeypatch.setattr("rankloop.loop_report.write_loop_report", lambda ws, run_id: None)
    out = CliRunner().invoke(main, ["loop", "--simulate", ORACLE, "--new", "--workspace", str(workspace.root)])
    toml.write_text(text, encoding="utf-8")
    assert out.exit_code == 0, out.output
    return seen[0]
