"""method 'probe' (reward/probe.py): the backbone frozen, a linear Bradley-Terry reward fitted on one layer's
response-averaged states. With a tiny LM and a preference that the texts alone decide."""

from __future__ import annotations

import hashlib

import pytest

from reward.config import RewardConfigError
from reward.evaluate import evaluate_reward_model
from reward.score import RewardScorer
from reward.train import train_reward_model
from store.models import get_model
from store.runs import get_run, list_runs
from tests.reward_data import BAD, GOOD, MIDDLE, register_tiny, seed_pairs, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def ws(workspace, tiny_lm):
    register_tiny(workspace.db, tiny_lm)
    seed_pairs(workspace.db)
    return workspace


def _digest(folder) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()


def test_probe_learns_the_preference_leaves_the_backbone_alone_and_scores_the_same_after_loading(ws, tiny_lm):
    before = _digest(tiny_lm)
    result = train_reward_model(ws, tiny_config(method="probe", probe_penalties=[0.01, 1.0], probe_folds=3,
                                                reviewers=["alice"]),  # bob swaps the bottom two: no clean 1.0
                                progress=False)
    m = result.metrics
    assert m["eval_accuracy"] == 1.0 and m["eval_pairs"] > 0 and m["penalty"] in (0.01, 1.0)
    assert set(m["cv_accuracy"]) == {"0.01", "1"} and max(m["cv_accuracy"].values()) == 1.0
    assert _digest(tiny_lm) == before, "the backbone's files changed"
    run = get_run(ws.db, result.run_id)
    assert run.status == "succeeded" and run.metrics["method"] == "probe"
    row = get_model(ws.db, result.model_name)
    assert row.kind == "reward" and row.path == str(result.model_dir) and row.parent_id is not None

    scorer = RewardScorer(result.model_dir)
    good, middle, bad = scorer.score(["\n\nHuman: Question 99: say something useful.\n\nAssistant:"] * 3,
                                     [GOOD, MIDDLE, BAD])
    assert good > middle > bad
    evaluation = evaluate_reward_model(ws, result.model_name)  # the held-out pairs, scored from the saved folder
    assert evaluation.metrics["accuracy"] == m["eval_accuracy"]
    assert evaluation.metrics["pairs"] == m["eval_pairs"]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"probe_folds": 1}, "probe_folds: must be >= 2"),
    ({"probe_penalties": []}, "probe_penalties: must be one or more numbers > 0"),
    ({"probe_penalties": [1.0, -1.0]}, "probe_penalties: must be one or more numbers > 0"),
    ({"margin": True}, "margin: method 'probe' \\(the default\\) has no margin term"),
])
def test_bad_probe_settings_fail_before_a_run(ws, overrides, message):
    with pytest.raises(RewardConfigError, match=message):
        tiny_config(method="probe", **overrides)
    assert list_runs(ws.db, kind="reward") == []


def test_a_layer_the_backbone_lacks_fails_the_run_naming_the_field(ws):
    with pytest.raises(ValueError, match=r"probe_layer: the backbone has \d+ layers, got 99"):
        train_reward_model(ws, tiny_config(method="probe", probe_layer=99), progress=False)
    (run,) = list_runs(ws.db, kind="reward")
    assert run.status == "failed" and "probe_layer" in run.error


def test_train_reward_cli_trains_a_probe_by_default(ws):
    import json

    from click.testing import CliRunner

    from tests.reward_data import reward_cli

    out = CliRunner().invoke(reward_cli(), ["train", "reward", "-w", str(ws.root), "--base", "tiny",
                                            "--no-progress", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output[out.output.index("{"):])
    assert result["metrics"]["penalty"] > 0 and 0 <= result["metrics"]["eval_accuracy"] <= 1
    assert get_run(ws.db, result["run_id"]).config["config"]["method"] == "probe"

    out = CliRunner().invoke(reward_cli(), ["train", "reward", "-w", str(ws.root), "--base", "tiny", "--set",
                                            "probe_precision=int8", "--no-progress"])
    assert out.exit_code == 0, out.output
    assert "probe on layer 0 (int8):" in out.output and "L2 penalty" in out.output
    assert "tensorboard" not in out.output  # a probe writes no TensorBoard logs


@pytest.mark.parametrize("layer", [0, 1, -1])
@pytest.mark.parametrize("backbone", ["causal", "encoder"])
def test_batched_features_equal_one_full_pass_per_sequence(tiny_lm, tmp_path, backbone, layer):
    """Batching pads sequences of other lengths, stops below the last layer, computes a prompt shared by several
    responses once (causal) and a repeated sequence once; none of it may change a feature."""
    import torch
    from transformers import AutoTokenizer

    from reward.probe import load_frozen_backbone, response_features
    from tests.tiny import build_encoder

    folder = tiny_lm if backbone == "causal" else build_encoder(tmp_path / "enc")
    model, tokenizer = load_frozen_backbone(str(folder), "cpu"), AutoTokenizer.from_pretrained(str(folder))
    long = "Question 3 is a longer prompt than the others, " * 4  # cut from the left, by each response's length
    prompts = ["Question 1: say something.", "Q2", long] * 2 + ["Question 1: say something.", "Q4"]
    responses = [GOOD, BAD, MIDDLE, "", MIDDLE + " " + GOOD, "ok", GOOD, BAD]  # one sequence twice, one prompt 3x
    batched = response_features(model, tokenizer, prompts, responses, max_length=24, layer=layer, batch_size=4)

    index = {0: 1, 1: 1, -1: 2}[layer]  # two layers: hidden_states[1] is the middle (and first) layer's output
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(" " + response.strip(), add_special_tokens=False)["input_ids"][:12] or [
            tokenizer.eos_token_id or tokenizer.pad_token_id]
        with torch.no_grad():
            states = model(input_ids=torch.tensor([(p + r)[-24:]]), output_hidden_states=True).hidden_states
        assert batched[i] == pytest.approx(states[index][0, -len(r):].mean(0).double().numpy(), abs=1e-5)


def test_int8_probe_records_its_precision_and_scores_the_same_after_loading(ws):
    import json

    result = train_reward_model(ws, tiny_config(method="probe", probe_precision="int8", reviewers=["alice"]),
                                progress=False)
    assert result.metrics["probe_precision"] == "int8"
    assert json.loads((result.model_dir / "probe.json").read_text())["precision"] == "int8"
    evaluation = evaluate_reward_model(ws, result.model_name)  # features recomputed in int8 from the saved folder
    assert evaluation.metrics["accuracy"] == result.metrics["eval_accuracy"]


def test_bad_probe_precision_names_the_field_and_int8_is_refused_off_the_cpu():
    from reward.probe import probe_precision

    with pytest.raises(RewardConfigError, match="probe_precision: must be 'float32' or 'int8', got 'fp8'"):
        tiny_config(method="probe", probe_precision="fp8")
    with pytest.raises(ValueError, match="probe_precision: 'int8' runs on the CPU only, but the device is cuda:0"):
        probe_precision("int8", "cuda:0")
    assert probe_precision("int8", "cpu") == "int8" and probe_precision("float32", "cuda:0") == "float32"


def test_non_finite_states_fail_the_run_naming_a_response_and_save_no_model(ws, tiny_lm, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from store.models import add_model, list_models

    damaged = tmp_path / "lm-nan"
    shutil.copytree(tiny_lm, damaged)
    weights = load_file(str(damaged / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj.weight"
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(damaged / "model.safetensors"), metadata={"format": "pt"})
    add_model(ws.db, "nan", "policy", base=str(damaged), path=str(damaged))

    with pytest.raises(ValueError, match=r"probe: the backbone's layer states are not finite for \d+ chosen "
                                         r"responses \(first: comparison \d+, response \d+\)"):
        train_reward_model(ws, tiny_config(method="probe", base="nan"), progress=False)
    (run,) = list_runs(ws.db, kind="reward")
    assert run.status == "failed" and "not finite" in run.error
    assert list_models(ws.db, kind="reward") == []


@pytest.mark.parametrize("reads", [[(1, "mean"), (2, "last"), (3, "mean"), (1, "last")], [(-1, "last"), (2, "mean")]])
def test_several_layers_and_poolings_in_one_pass_equal_one_full_pass_per_sequence(tiny_lm, reads):
    """`reads` below the top layer stop at the highest one asked (one hook per layer); with the last layer the
    full pass gives them all. Every (layer, pool) must equal the full pass's states, and `response_features`
    puts them side by side in the order asked."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from reward.probe import response_feature_sets, response_features

    config = AutoConfig.from_pretrained(str(tiny_lm))
    config.num_hidden_layers = 4  # room for several layers below the last
    torch.manual_seed(0)
    model, tokenizer = AutoModel.from_config(config).eval(), AutoTokenizer.from_pretrained(str(tiny_lm))
    prompts = ["Question 1: say something.", "Q2", "Question 1: say something."]
    responses = [GOOD, BAD, MIDDLE]
    sets = response_feature_sets(model, tokenizer, prompts, responses, 24, reads, batch_size=2)
    side_by_side = response_features(model, tokenizer, prompts, responses, 24, 0, reads=reads, batch_size=2)
    assert side_by_side.shape == (3, 32 * len(reads))
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(" " + response, add_special_tokens=False)["input_ids"][:12]
        with torch.no_grad():
            states = model(input_ids=torch.tensor([(p + r)[-24:]]), output_hidden_states=True).hidden_states
        for k, (layer, pool) in enumerate(reads):
            x = states[layer if layer > 0 else 4][0]
            expected = (x[-len(r):].mean(0) if pool == "mean" else x[-1]).double().numpy()
            assert sets[layer, pool][i] == pytest.approx(expected, abs=1e-5), (layer, pool)
            assert side_by_side[i, 32 * k:32 * (k + 1)] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="probe pooling: must be one of mean, last, got 'max'"):
        response_feature_sets(model, tokenizer, prompts, responses, 24, [(1, "max")])


def test_cv_folds_by_group_keep_each_group_in_one_fold():
    from reward.probe import cv_folds

    groups = ["a", "b", "a", "c", "b", "d", "e", "a"]
    folds = cv_folds(len(groups), 3, seed=1, groups=groups)
    assert all(len({int(f) for f, g in zip(folds, groups, strict=True) if g == key}) == 1 for key in set(groups))
    assert len(set(folds.tolist())) == 3  # five groups dealt over three folds: none empty
    assert sorted(cv_folds(9, 3, seed=1).tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # without groups: pairs dealt


def test_a_probe_on_several_layers_records_them_and_scores_the_same_after_loading(ws):
    import json

    result = train_reward_model(ws, tiny_config(method="probe", probe_layers=[1, -1], probe_penalties=[0.01, 1.0],
                                                probe_folds=3, reviewers=["alice"]), progress=False)
    saved = json.loads((result.model_dir / "probe.json").read_text())
    assert saved["layers"] == [1, -1] and len(saved["w"]) == 2 * 32  # two layers of the tiny LM side by side
    assert result.metrics["probe_layers"] == [1, -1] and result.metrics["eval_accuracy"] == 1.0
    evaluation = evaluate_reward_model(ws, result.model_name)  # features recomputed from the saved folder
    assert evaluation.metrics["accuracy"] == result.metrics["eval_accuracy"]
    good, bad = RewardScorer(result.model_dir).score(["\n\nHuman: Question 99: say something useful.\n\nAssistant:"]
                                                     * 2, [GOOD, BAD])
    assert good > bad
    with pytest.raises(RewardConfigError, match=r"probe_layers: must not repeat a layer, got \[1, 1\]"):
        tiny_config(method="probe", probe_layers=[1, 1])


def test_probe_cv_by_prompts_deals_whole_prompts_to_the_folds(ws, monkeypatch):
    import reward.probe

    dealt = []
    real = reward.probe.cv_folds

    def spy(n, folds, seed, groups=None):
        out = real(n, folds, seed, groups)
        dealt.append((groups, out))
        return out

    monkeypatch.setattr(reward.probe, "cv_folds", spy)
    result = train_reward_model(ws, tiny_config(method="probe", probe_cv="prompts", probe_folds=3,
                                                reviewers=["alice"]), progress=False)
    (groups, folds), = dealt
    assert groups is not None and len(set(groups)) >= 3 and len(groups) == result.metrics["train_pairs"]
    assert all(len({int(f) for f, g in zip(folds, groups, strict=True) if g == key}) == 1 for key in set(groups))
    assert result.metrics["eval_accuracy"] == 1.0
    with pytest.raises(RewardConfigError, match="probe_cv: 'prompts' folds are for loss 'pairwise'"):
        tiny_config(method="probe", probe_cv="prompts", loss="ranking")
