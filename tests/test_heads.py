"""Fine-tuning heads as config (heartgpt.heads): the released AF and beat models are
instances of classify / tag, and each reduction and objective does what it says."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from heartgpt.data.labels import LabelSchema
from heartgpt.heads.objectives import RegressionObjective
from heartgpt.heads.registry import build_head
from heartgpt.model import GPTConfig
from heartgpt.training.finetune import FinetuneModule

TINY = {"vocab_size": 101, "block_size": 16, "n_embd": 16, "n_head": 2, "n_layer": 1, "dropout": 0.0}


def make_module(head: dict, *, task: str = "test", modality: str = "ecg",
                pretrained: str | None = None, model_config: dict | None = None,
                beats: dict | None = None) -> FinetuneModule:
    return FinetuneModule(
        model_config=model_config or TINY, modality=modality, task=task, head=head,
        pretrained=pretrained, lr=1e-3, betas=[0.9, 0.95], weight_decay=0.1, warmup_steps=0,
        lr_decay_steps=10, min_lr_ratio=0.1, beats=beats, seed=0)


def paper_config(modality: str) -> dict:
    return GPTConfig(vocab_size=101 if modality == "ecg" else 102).to_dict()


# ---------------------------------------------------------------- the released models as instances

RELEASED_AF = {"example_context_ECG_AFib1": ("ECGPT_AF_1k_iters", "ecg"),
               "example_context_PPG_AFib": ("PPGPT_AF_1k_iters", "ppg")}


@pytest.mark.shared
@pytest.mark.parametrize("name", sorted(RELEASED_AF))
def test_released_af_models_are_binary_classify_heads(name, weights_dir, reference_dir):
    """``task=af`` is ``classify`` with one output read at the last position: the released AF
    file loads into it unchanged and gives the reference probability (and, as a stride-1
    ``tag`` head, the reference sigmoid at every position)."""
    zip_name, modality = RELEASED_AF[name]
    ref = np.load(reference_dir / f"{name}.npz")
    tokens = torch.from_numpy(ref["tokens"])[None].long()  # (1, 500)
    pretrained = str(weights_dir / f"{zip_name}.zip")
    classify = make_module({"kind": "classify", "outputs": 1, "pooling": "last"}, task="af",
                           modality=modality, pretrained=pretrained,
                           model_config=paper_config(modality))
    tag = make_module({"kind": "tag", "target": "class", "outputs": 1, "stride": 1}, task="af",
                      modality=modality, pretrained=pretrained, model_config=paper_config(modality))
    for module in (classify, tag):
        module.setup("test")  # loads `pretrained`, as a test-only run does
        module.eval()
    with torch.no_grad():
        prob = classify.predict(tokens)  # (1,)
        per_position = tag.predict(tokens)  # (1, 500)
    assert prob.shape == (1,) and per_position.shape == (1, 500)
    assert prob.item() == pytest.approx(float(ref["af_prob"]), abs=1e-5)
    np.testing.assert_allclose(per_position[0].numpy(), ref["af_sigmoid_all_positions"],
                               atol=1e-5, rtol=0)


@pytest.mark.shared
def test_the_released_beat_model_is_a_binary_tag_head(weights_dir, reference_dir):
    ref = np.load(reference_dir / "example_context_PPG_beat_detect_long_input.npz")
    module = make_module({"kind": "tag", "target": "class", "outputs": 1, "stride": 1},
                         task="beats", modality="ppg",
                         pretrained=str(weights_dir / "PPGPT_beat_5k_iters.zip"),
                         model_config=paper_config("ppg"),
                         beats={"tolerance_ms": 150, "peak_height": 0.015,
                                "peak_distance_ms": 280, "peak_max_width_ms": 400})
    module.setup("test")
    module.eval()
    with torch.no_grad():
        probs = module.predict(torch.from_numpy(ref["window_tokens"]).long())  # (71, 500)
    np.testing.assert_allclose(probs.numpy(), ref["window_outputs"], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- reductions


def test_attention_pooling_starts_as_the_mean_and_learns_weights():
    module = make_module({"kind": "classify", "outputs": 3, "pooling": "attention"})
    x = torch.randint(0, 101, (4, 16))
    per_position = module.model(x)  # (4, 16, 3)
    torch.testing.assert_close(module(x), per_position.mean(1))
    scorer = module.task_head.reduction.score
    with torch.no_grad():
        scorer.weight.normal_()
    hidden = module.model.hidden(x)
    weights = torch.softmax(scorer(hidden), dim=1)  # (4, 16, 1)
    torch.testing.assert_close(module(x), module.model.head((weights * hidden).sum(1)))
    # the scorer is the module's, so the optimiser (built over the module) trains it
    assert any(p is scorer.weight for g in module.configure_optimizers()["optimizer"].param_groups
               for p in g["params"])


def test_a_tag_head_reads_the_last_token_of_every_chunk():
    module = make_module({"kind": "tag", "target": "value", "outputs": 1, "stride": 4})
    x = torch.randint(0, 101, (2, 16))
    out = module(x)
    assert out.shape == (2, 4, 1)
    torch.testing.assert_close(out, module.model(x)[:, 3::4])


# ---------------------------------------------------------------- objectives


def test_multiclass_loss_is_cross_entropy_and_predictions_are_softmax():
    head = build_head({"kind": "classify", "outputs": 3}, n_embd=16)
    outputs, target = torch.randn(5, 3), torch.tensor([0.0, 2.0, 1.0, 1.0, 0.0])
    assert head.objective.loss(outputs, target).item() == pytest.approx(
        F.cross_entropy(outputs, target.long()).item())
    torch.testing.assert_close(head.objective.predict(outputs).sum(-1), torch.ones(5))


def test_regression_is_standardised_and_predicts_in_the_labels_units():
    head = build_head({"kind": "regress", "outputs": 2, "loss": "mse"}, n_embd=16)
    objective = head.objective
    assert isinstance(objective, RegressionObjective)
    objective.set_statistics(torch.tensor([120.0, 80.0]), torch.tensor([15.0, 10.0]))
    target = torch.tensor([[135.0, 70.0]])
    perfect = torch.tensor([[1.0, -1.0]])  # one std above / below the mean
    assert objective.loss(perfect, target).item() == pytest.approx(0.0)
    torch.testing.assert_close(objective.predict(perfect), target)
    assert objective.loss(torch.zeros(1, 2), target).item() == pytest.approx(1.0)  # (1 + 1) / 2
    # the statistics are buffers: a checkpoint's state dict carries them
    assert {"objective.mean", "objective.std", "objective.standardised"} <= set(head.state_dict())


def test_missing_values_are_left_out_of_loss_and_metrics():
    head = build_head({"kind": "tag", "target": "value", "outputs": 1, "stride": 2}, n_embd=16)
    objective = head.objective
    outputs = torch.tensor([[[1.0], [5.0]]])  # (B=1, P=2, 1)
    target = torch.tensor([[1.0, float("nan")]])
    assert objective.loss(outputs, target).item() == pytest.approx(0.0)
    metrics = objective.metrics("position")
    objective.update(metrics, outputs, target)
    objective.update(metrics, torch.tensor([[[2.0], [0.0]]]), torch.tensor([[3.0, 0.0]]))
    scalars = objective.scalars(metrics.compute(), ("hr",))
    assert scalars["mae"].item() == pytest.approx((0 + 1 + 0) / 3)


def test_several_regression_targets_are_scored_per_name():
    head = build_head({"kind": "regress", "outputs": 2}, n_embd=16)
    metrics = head.objective.metrics("sequence")
    head.objective.update(metrics, torch.tensor([[1.0, 2.0], [3.0, 5.0]]),
                          torch.tensor([[1.0, 1.0], [3.0, 3.0]]))
    scalars = head.objective.scalars(metrics.compute(), ("sbp", "dbp"))
    assert scalars["mae_sbp"].item() == pytest.approx(0.0)
    assert scalars["mae_dbp"].item() == pytest.approx(1.5)


@pytest.mark.parametrize(("head", "schema", "why"), [
    ({"kind": "classify", "outputs": 3}, LabelSchema(("rhythm",), "class", ("a", "b")),
     "the head has 3 classes; the shards hold rhythm: 2 classes"),
    ({"kind": "classify", "outputs": 1}, LabelSchema(("hr",), "value"),
     "the head predicts classes; the shards hold hr: values"),
    ({"kind": "classify", "outputs": 1}, LabelSchema(("r",), "class", ("a", "b", "c")),
     "a 1-output head is binary: the shards must hold 2 classes"),
    ({"kind": "regress", "outputs": 1}, LabelSchema(("rhythm",), "class", ("a", "b", "c")),
     "the head predicts values; the shards hold rhythm: 3 classes (a, b, c)"),
    ({"kind": "regress", "outputs": 1}, LabelSchema(("sbp", "dbp"), "value"),
     "the head predicts 1 values; the shards hold sbp, dbp: values"),
    ({"kind": "tag", "target": "value", "stride": 100}, LabelSchema(("hr",), "value", stride=200),
     "the head tags every 100 tokens; the shards hold hr: values, one every 200 tokens"),
])
def test_a_head_refuses_labels_it_cannot_learn(head, schema, why):
    assert why in build_head(head, n_embd=16).check_labels(schema)


def test_a_head_accepts_the_labels_it_predicts():
    cases = [({"kind": "classify", "outputs": 3}, LabelSchema(("r",), "class", ("a", "b", "c"))),
             ({"kind": "classify", "outputs": 1}, LabelSchema.legacy("sequence")),
             ({"kind": "tag", "outputs": 1}, LabelSchema.legacy("token")),
             ({"kind": "regress", "outputs": 2}, LabelSchema(("sbp", "dbp"), "value")),
             ({"kind": "tag", "target": "value", "stride": 200}, LabelSchema(("hr",), "value", stride=200))]
    for head, schema in cases:
        assert build_head(head, n_embd=16).check_labels(schema) is None, head


@pytest.mark.parametrize(("spec", "match"), [
    ({"kind": "segment"}, "head.kind"),
    ({"kind": "classify", "pooling": "max"}, "head.pooling"),
    ({"kind": "regress", "loss": "bce"}, "head.loss"),
    ({"kind": "classify", "outputs": 3, "loss": "bce"}, "does not fit a multiclass head"),
    ({"kind": "tag", "target": "label"}, "head.target"),
])
def test_bad_head_configs_are_refused(spec, match):
    with pytest.raises(ValueError, match=match):
        build_head(spec, n_embd=16)


def test_a_regression_head_without_statistics_will_not_score():
    module = make_module({"kind": "regress", "outputs": 1})
    from heartgpt.errors import InputError

    with pytest.raises(InputError, match="no target statistics"):
        module.on_test_start()


# ---------------------------------------------------------------- tools read heads as trained


def _save_ckpt(module: FinetuneModule, path):
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


@pytest.mark.parametrize(("head", "refuse", "why"), [
    ({"kind": "regress", "outputs": 1}, "beats", "is a regress head predicting values"),
    ({"kind": "tag", "target": "value", "stride": 4}, "af", "is a tag head predicting values"),
    ({"kind": "tag", "outputs": 1, "stride": 1}, "beats", "is a tag head"),
    ({"kind": "classify", "outputs": 1}, "af", "is a classify head (one probability per window)"),
    ({"kind": "tag", "outputs": 1, "stride": 4}, "af", "is a tag head of stride 4"),
])
def test_a_probability_tool_refuses_a_head_it_would_misread(tmp_path, head, refuse, why):
    """screen_af / detect_beats / predict / the app read 1 output as one probability per
    window (AF) or at every position (beats): a regression or a tag of another stride would
    give numbers that are not the model's predictions; the refusal names the command that
    applies any head."""
    from heartgpt.errors import InputError
    from heartgpt.inference.loading import load_tool_model

    path = _save_ckpt(make_module(head), tmp_path / "model.ckpt")
    with pytest.raises(InputError, match="this tool reads a binary") as err:
        load_tool_model(path, "binary", "ecg", refuse_task=refuse)
    assert why in str(err.value)
    assert "python -m heartgpt.predict" in str(err.value)


def test_the_tools_read_the_heads_they_were_made_for(tmp_path):
    from heartgpt.inference.loading import load_tool_model

    af = _save_ckpt(make_module({"kind": "classify", "outputs": 1, "pooling": "last"}, task="af"),
                    tmp_path / "af.ckpt")
    beats = _save_ckpt(make_module({"kind": "tag", "outputs": 1, "stride": 1}, task="beats"),
                       tmp_path / "beats.ckpt")
    assert load_tool_model(af, "binary", "ecg", refuse_task="beats")[0].head["pooling"] == "last"
    assert load_tool_model(beats, "binary", "ecg", refuse_task="af")[0].head["kind"] == "tag"
    mean = _save_ckpt(make_module({"kind": "classify", "outputs": 1, "pooling": "mean"},
                                  task="af"), tmp_path / "mean.ckpt")  # through its own head
    assert load_tool_model(mean, "binary", "ecg", refuse_task="beats")[0].head["pooling"] == "mean"


def test_a_head_with_state_of_its_own_is_not_exported_without_it(tmp_path):
    """A regression's target mean/std (or attention pooling) live beside the GPT: a
    ``.safetensors`` carries them (tests/test_export_heads.py: ONNX too); a torch_export
    program, which holds the GPT only, is refused; a stateless head's export carries the head,
    so the tools still read it right."""
    from heartgpt.export import export
    from heartgpt.model.checkpoints import load_model
    from training_helpers import compose_train

    regress = make_module({"kind": "regress", "outputs": 1})
    regress.task_head.objective.set_statistics(torch.tensor([70.0]), torch.tensor([12.0]))
    path = _save_ckpt(regress, tmp_path / "hr.ckpt")
    assert set(load_model(path).head_state) == {"objective.mean", "objective.std",
                                                "objective.standardised"}
    cfg = compose_train([f"checkpoint={path}", "format=safetensors", f"out={tmp_path / 'x.safetensors'}"],
                        config_name="export")
    export(cfg)
    back = load_model(tmp_path / "x.safetensors")
    assert back.head_state["objective.mean"].tolist() == [70.0]
    cfg = compose_train([f"checkpoint={path}", "format=torch_export", f"out={tmp_path / 'x.pt2'}"],
                        config_name="export")
    with pytest.raises(Exception, match="head keeps state outside the network"):
        export(cfg)
    mean_pooled = _save_ckpt(make_module({"kind": "classify", "outputs": 1, "pooling": "mean"}),
                             tmp_path / "mean.ckpt")
    cfg = compose_train([f"checkpoint={mean_pooled}", "format=safetensors",
                         f"out={tmp_path / 'mean.safetensors'}"], config_name="export")
    export(cfg)
    assert load_model(tmp_path / "mean.safetensors").head["pooling"] == "mean"
