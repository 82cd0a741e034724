"""Trainer core: gradient accumulation, argument checks, metric hooks, best checkpoint, early stopping, lr schedules,
clipping, mixed precision and tensorboard tags. Tiny models on CPU."""
import math

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from lm_experiments_tools import Trainer, TrainerArgs
from lm_experiments_tools.checkpoint import BEST_CHECKPOINT_NAME
from trainer_scripts.tiny_task import (TinyRegressor, build_trainer, collate, dataset_metrics, flat_parameters,
                                      keep_errors, make_dataset)

VOCAB_SIZE = 50


def tiny_bert_batches(n_batches: int, batch_size: int, seq_len: int = 12) -> list[dict]:
    """Padded classification batches: random lengths, so that attention masks matter."""
    generator = torch.Generator().manual_seed(7)
    batches = []
    for _ in range(n_batches):
        input_ids = torch.randint(1, VOCAB_SIZE, (batch_size, seq_len), generator=generator)
        lengths = torch.randint(3, seq_len + 1, (batch_size,), generator=generator)
        attention_mask = (torch.arange(seq_len) < lengths[:, None]).long()  # (batch, seq_len)
        batches.append({"input_ids": input_ids * attention_mask, "attention_mask": attention_mask,
                        "labels": torch.randint(0, 3, (batch_size,), generator=generator),
                        "sample_ids": torch.arange(batch_size)})
    return batches


def tiny_bert() -> BertForSequenceClassification:
    config = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=3,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


def train_bert(batch_size: int, accumulation: int) -> torch.Tensor:
    torch.manual_seed(0)
    model = tiny_bert()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # Adam would amplify float error of ~0 gradients
    args = TrainerArgs(batch_size=batch_size, gradient_accumulation_steps=accumulation, iters=3, log_interval=1)
    batches = tiny_bert_batches(3, batch_size * accumulation)
    Trainer(args, model, optimizer, batches, None).train()
    return flat_parameters(model)


def test_accumulation_matches_one_big_batch_hf_model():
    reference = train_bert(batch_size=4, accumulation=1)
    accumulated = train_bert(batch_size=1, accumulation=4)
    initial = flat_parameters((torch.manual_seed(0), tiny_bert())[1])
    assert not torch.allclose(reference, initial)  # the steps did change the model
    torch.testing.assert_close(accumulated, reference, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("batch_size, accumulation", [(1, 4), (2, 2)])
def test_accumulation_matches_one_big_batch_mlp(batch_size, accumulation):
    def final_parameters(args):
        trainer = build_trainer(args, with_validation=False)
        trainer.train()
        return flat_parameters(trainer.model)

    reference = final_parameters(TrainerArgs(batch_size=4, iters=3))
    accumulated = final_parameters(TrainerArgs(batch_size=batch_size, gradient_accumulation_steps=accumulation,
                                               iters=3))
    torch.testing.assert_close(accumulated, reference, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("overrides, message", [
    ({"clip_grad_norm": 1.0, "clip_grad_value": 1.0}, "clip_grad_norm=1.0 and clip_grad_value=1.0"),
    ({"lr_scheduler": "linear"}, "needs lr"),
    ({"lr_scheduler": "no_such_schedule", "lr": 0.1}, "lr_scheduler='no_such_schedule'"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps=0"),
    ({"fp16": True, "bf16": True}, "fp16 and bf16"),
    ({"optimize_mode": "best"}, "optimize_mode='best'"),
    ({"resume": True}, "resume needs model_path"),
])
def test_bad_arguments_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainerArgs(**overrides)


def test_bad_setup_fails_before_any_step(tmp_path):
    with pytest.raises(ValueError, match="use_lr_drop needs validation data"):
        build_trainer(TrainerArgs(use_lr_drop=True), with_validation=False)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="is not writable"):
        build_trainer(TrainerArgs(model_path=str(blocker / "run")))
    trainer = build_trainer(TrainerArgs(optimize_metric="accuracy", iters=5))
    initial = flat_parameters(trainer.model)
    with pytest.raises(ValueError, match=r"optimize_metric='accuracy'.*expected one of \['loss'\]"):
        trainer.train()
    assert trainer.n_iter == 0
    assert torch.equal(flat_parameters(trainer.model), initial)


def test_oversized_dataloader_batches_are_rejected():
    trainer = build_trainer(TrainerArgs(batch_size=4, gradient_accumulation_steps=2, iters=2),
                            with_validation=False)
    trainer.batch_stream.dataloader = DataLoader(make_dataset(), batch_size=16, collate_fn=collate)
    with pytest.raises(ValueError, match="batches of 16 samples: expected at most .* = 8"):
        trainer.train()


def test_namespace_args_and_forward_filtering():
    class KwargsModel(TinyRegressor):
        def forward(self, features, targets=None, **kwargs):
            self.seen_keys = set(kwargs)
            return super().forward(features, targets)

    from argparse import Namespace
    # a script's own fields (task) are ignored, missing TrainerArgs fields take their defaults
    args = Namespace(batch_size=4, gradient_accumulation_steps=1, iters=2, task="memorize", lr=0.01)
    trainer = build_trainer(args, model=KwargsModel(), with_validation=False)
    trainer.train()
    assert trainer.n_iter == 2 and trainer.args.lr == 0.01
    assert trainer.model.seen_keys == {"sample_ids"}  # **kwargs models get every batch key


def scripted_metric(values_by_step: dict):
    """batch_metrics_fn whose 'score' at validation step n is values_by_step[n] (the pre-check runs at step 0)."""
    holder = {}

    def batch_metrics_fn(batch, output):
        return {"score": values_by_step.get(holder["trainer"].n_iter, 0.0), "loss": output["loss"]}
    return holder, batch_metrics_fn


@pytest.mark.parametrize("mode, scores, improved_steps", [
    ("min", [5.0, 3.0, 3.0, 1.0, 2.0], [2, 4, 8]),
    ("max", [1.0, 2.0, 0.5, 2.0, 4.0], [2, 4, 10]),
])
def test_best_checkpoint_written_exactly_on_improvement(tmp_path, mode, scores, improved_steps):
    values = {0: 0.0, **{2 * (i + 1): score for i, score in enumerate(scores)}}
    holder, batch_metrics_fn = scripted_metric(values)
    args = TrainerArgs(model_path=str(tmp_path), iters=10, valid_interval=2, save_best=True,
                       optimize_metric="score", optimize_mode=mode)
    trainer = build_trainer(args, batch_metrics_fn=batch_metrics_fn)
    holder["trainer"] = trainer
    best_saves = []
    original_save = trainer.save
    trainer.save = lambda path, suffix="", metrics=None: (
        best_saves.append(trainer.n_iter) if suffix == "best" else None, original_save(path, suffix, metrics))[1]
    result = trainer.train()
    assert best_saves == improved_steps
    best = torch.load(tmp_path / BEST_CHECKPOINT_NAME, weights_only=True)
    assert best["iteration"] == improved_steps[-1]
    assert best["metrics"]["score"] == values[improved_steps[-1]] == result["score"]


def test_early_stopping_after_patience_validations(tmp_path):
    values = {step: (1.0 if step == 3 else 2.0) for step in range(0, 40)}
    holder, batch_metrics_fn = scripted_metric(values)
    args = TrainerArgs(iters=30, valid_interval=3, early_stopping_patience=4, optimize_metric="score")
    trainer = build_trainer(args, batch_metrics_fn=batch_metrics_fn)
    holder["trainer"] = trainer
    trainer.train()
    assert trainer.n_iter == 3 + 4 * 3  # best at the 1st validation, then 4 without improvement
    assert trainer.validations_without_improvement == 4


@pytest.mark.parametrize("mode, target, values, stop_step", [
    ("max", 1.0, [0.5, 0.9, 1.0, 1.0, 1.0], 9),   # stops at the first validation that reaches the target
    ("max", 1.0, [0.5, 0.9, 0.95, 0.97, 0.99], 15),  # never reached: trains all iters
    ("min", 0.2, [0.9, 0.5, 0.3, 0.19, 0.1], 12),
])
def test_early_stopping_at_target(mode, target, values, stop_step):
    by_step = {0: values[0], **{3 * (i + 1): value for i, value in enumerate(values)}}
    holder, batch_metrics_fn = scripted_metric(by_step)
    args = TrainerArgs(iters=15, valid_interval=3, early_stopping_target=target, optimize_metric="score",
                       optimize_mode=mode)
    trainer = build_trainer(args, batch_metrics_fn=batch_metrics_fn)
    holder["trainer"] = trainer
    result = trainer.train()
    assert trainer.n_iter == stop_step
    assert result["score"] == pytest.approx(by_step[stop_step])  # the best is the last validation here


def test_lr_drop_on_plateau():
    values = {step: 1.0 for step in range(0, 40)}
    holder, batch_metrics_fn = scripted_metric(values)
    args = TrainerArgs(iters=8, valid_interval=2, use_lr_drop=True, lr_drop_factor=0.5, lr_drop_patience=0,
                       lr=0.1, optimize_metric="score")
    trainer = build_trainer(args, batch_metrics_fn=batch_metrics_fn)
    holder["trainer"] = trainer
    trainer.train()
    # the first validation sets the best value, the three after it do not improve: three drops
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 3)


def test_dataset_level_metrics_are_exact():
    trainer = build_trainer(TrainerArgs(iters=1), keep_for_metrics_fn=keep_errors, metrics_fn=dataset_metrics)
    valid = make_dataset(24, seed=1)
    metrics = trainer.validate(DataLoader(valid, batch_size=5, collate_fn=trainer.valid_dataloader.collate_fn),
                               split="test", write_tb=False)
    with torch.no_grad():
        expected_mae = (trainer.model(valid.tensors[0])["predictions"] - valid.tensors[1]).abs().mean()
    assert metrics["n_samples"] == metrics["n_distinct"] == 24
    assert metrics["mae"] == pytest.approx(expected_mae.item(), rel=1e-6)


def test_generate_on_valid_passes_generation_outputs():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB_SIZE, n_positions=32, n_embd=16, n_layer=1, n_head=2))
    input_ids = torch.randint(0, VOCAB_SIZE, (2, 6))
    batch = {"input_ids": input_ids, "labels": input_ids, "input_ids_generate": input_ids[:, :4],
             "attention_mask_generate": torch.ones(2, 4, dtype=torch.long)}
    generated = []
    args = TrainerArgs(use_generate_on_valid=True, iters=1)
    trainer = Trainer(args, model, torch.optim.SGD(model.parameters(), lr=0.1), [batch], [batch],
                      keep_for_metrics_fn=lambda b, out: generated.append(out["generation_outputs"]) or {},
                      generate_kwargs={"max_new_tokens": 3, "do_sample": False, "pad_token_id": 0})
    trainer.validate(trainer.valid_dataloader, write_tb=False)
    assert generated[-1].shape == (2, 4 + 3)
    assert torch.equal(generated[-1][:, :4], input_ids[:, :4])


@pytest.mark.parametrize("clip", ["clip_grad_norm", "clip_grad_value"])
def test_gradient_clipping_bounds_the_update(clip):
    args = TrainerArgs(iters=1, lr=1.0, **{clip: 1e-3})
    trainer = build_trainer(args, with_validation=False)  # SGD: the first momentum step is lr * gradient
    before = flat_parameters(trainer.model)
    trainer.train()
    update = flat_parameters(trainer.model) - before
    if clip == "clip_grad_norm":
        assert 0 < update.norm() <= 1e-3 * (1 + 1e-4)
    else:
        assert 0 < update.abs().max() <= 1e-3 * (1 + 1e-4)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_trains(precision, dtype):
    def batch_metrics_fn(batch, output):
        output_dtypes.add(output["predictions"].dtype)
        return {"loss": output["loss"]}

    output_dtypes = set()
    trainer = build_trainer(TrainerArgs(iters=40, log_interval=40, lr=0.05, batch_size=8, **{precision: True}),
                            with_validation=False, batch_metrics_fn=batch_metrics_fn)
    initial_loss = trainer.validate(trainer.batch_stream.dataloader, write_tb=False)["loss"]
    final = trainer.train()
    assert output_dtypes == {dtype}
    assert math.isfinite(final["loss"]) and final["loss"] < 0.5 * initial_loss


def test_tensorboard_tags_and_lr_schedule(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = TrainerArgs(model_path=str(tmp_path), iters=12, batch_size=4, log_interval=2, valid_interval=4, lr=0.1,
                       lr_scheduler="linear", num_warmup_steps=4, num_training_steps=12)
    build_trainer(args).train()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    expected_tags = {"loss/iterations/train", "loss/samples/train", "loss/iterations/valid", "loss/samples/valid",
                     "lr/iterations/param_group_0", "grad_norm/iterations/train",
                     "time_per_iteration/iterations/train", "nonfinite_steps/iterations/train",
                     "validations_without_improvement/iterations/valid"}
    assert expected_tags <= set(events.Tags()["scalars"])
    for event in events.Scalars("lr/iterations/param_group_0"):
        step = event.step
        factor = step / 4 if step < 4 else (12 - step) / (12 - 4)
        assert event.value == pytest.approx(0.1 * factor, abs=1e-7)
    samples = [event.step for event in events.Scalars("loss/samples/train")]
    assert samples == [2 * 4 * n for n in range(1, 7)]  # 4 samples per step


class RecordingWriter:
    """Stands in for the SummaryWriter: records the order of writes and flushes."""

    def __init__(self):
        self.calls = []

    def add_scalar(self, tag, value, step):
        self.calls.append(("add_scalar", tag))

    def flush(self):
        self.calls.append(("flush", None))


def test_validation_scalars_are_flushed_when_validate_returns(tmp_path):
    """A caller that validates after train() (the test split) and then snapshots the run folder sees the scalars:
    validate() flushes the writer rather than leaving the last writes to its background thread."""
    trainer = build_trainer(TrainerArgs(model_path=str(tmp_path), iters=4, batch_size=4, lr=0.1))
    trainer.train()
    trainer._tb = RecordingWriter()
    trainer.validate(trainer.batch_stream.dataloader, split="test")
    calls = trainer._tb.calls
    assert ("add_scalar", "loss/iterations/test") in calls
    assert calls[-1] == ("flush", None)
