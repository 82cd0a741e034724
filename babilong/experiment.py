"""A BABILong experiment: the model of the options, training each curriculum stage in its own run folder and
evaluating its best checkpoint at its length and at extra lengths, or evaluating a `--model_cpt` (docs/design.md).

`main` is what `run_finetuning_babilong_rmt.py` runs; `setup` builds an experiment without training, for the
analyses that evaluate a trained run folder again (`babilong.checkpoint_eval`).
"""
import dataclasses
import functools
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import set_seed

from lm_experiments_tools.checkpoint import BEST_CHECKPOINT_NAME
from lm_experiments_tools.class_names import get_cls_by_name
from lm_experiments_tools.errors import BadInputError
from lm_experiments_tools.run_config import CONFIG_FILE
from lm_experiments_tools.run_folder import (check_resumed_settings, delete_previous_run, holding_run_folders,
                                             prepare_evaluation_folder, prepare_run_folder)
from lm_experiments_tools.runs import (build_backbone, eval_batches, exit_on_bad_input, exit_on_failure, load_config,
                                       make_trainer, run_values, start_run, train_batches, write_run_config)
from rmt_experiments.checkpoints import is_model_folder, load_run_weights
from rmt_experiments.memory_options import build_wrapper, memory_config, prepare_segment_checkpointing
from rmt_experiments.offline_model import eos_token_id, load_tokenizer, offline_model_path, small_gpt2_config
from rmt_experiments.run_args import build_optimizer, parse_args

from .dataset import BABILongDataset, decoder_collate, encoder_collate
from .metrics import BabilongMetrics
from .model_folder import load_model_folder_weights, trained_values
from .results import append_result
from .run_args import (BABILONG_RESUME_MAY_CHANGE, DEFAULT_BACKBONE_CLS, WRAPPER_CLASSES, BabilongArgs,
                       backbone_name)
from .stages import Stage, answer_room, is_evaluated, plan_stages, stage_folder, stage_options
from .tasks import get_task

logger = logging.getLogger(__name__)

LONG_SAMPLE_SEGMENTS = 32  # from this many segments on, evaluation shows a progress bar over each batch's segments


# ---- model ----------------------------------------------------------------------------------------------------

def backbone_source(args: BabilongArgs, tokenizer) -> dict:
    """`pretrained` or `config` of the backbone: the options' one, else the offline default of the model type."""
    if args.from_pretrained:
        return {"pretrained": args.from_pretrained}
    if args.model_cfg:
        return {"config": load_config(args.model_cfg)}
    if args.model_type == "encoder":
        return {"pretrained": offline_model_path()}
    return {"config": small_gpt2_config(tokenizer, n_positions=args.input_size)}  # the decoder's offline default


def build_model(args: BabilongArgs, tokenizer, n_labels: int):
    """The backbone inside its memory wrapper, at max_n_segments segments: RMTEncoderForSequenceClassification, or
    a MemoryCell inside a RecurrentWrapper; --model_cls and --memory_cell_cls replace those classes and are built
    the same way, from the run's MemoryConfig (docs/design.md, "The memory configuration")."""
    labels = {"num_labels": n_labels} if args.model_type == "encoder" else {}
    backbone = build_backbone(args.backbone_cls or DEFAULT_BACKBONE_CLS[args.model_type], tokenizer,
                              input_size=args.input_size, **backbone_source(args, tokenizer), **labels)
    memory = memory_config(args, args.model_type)
    prepare_segment_checkpointing(memory)
    wrapper_cls = get_cls_by_name(args.model_cls) if args.model_cls else WRAPPER_CLASSES[args.model_type]
    if args.model_type == "encoder":
        return build_wrapper(wrapper_cls, backbone, tokenizer=tokenizer, sum_loss=args.sum_loss, memory_config=memory)
    cell = build_wrapper(get_cls_by_name(args.memory_cell_cls), backbone, memory_config=memory)
    return build_wrapper(wrapper_cls, cell, memory_config=memory)


# ---- training and evaluation ----------------------------------------------------------------------------------

@dataclass
class Experiment:
    """What every stage and evaluation shares: the options, the model, its tokenizer, the task and the process."""

    args: BabilongArgs
    trainer_args: object
    model: torch.nn.Module
    tokenizer: object
    task: object
    context: object
    run_folder: Path | None = None  # the stage being trained: where error.log goes

    @property
    def segment_size(self) -> int:
        return self.model.segment_size

    def dataset(self, stage: Stage, split: str, num_samples) -> BABILongDataset:
        natural = self.task.num_samples(split)
        if num_samples is not None and natural is not None:
            num_samples = min(num_samples, natural)  # a bAbI split has no more distinct questions
        args = self.args
        return BABILongDataset(self.task, args.noise_dataset, self.tokenizer, stage.input_seq_len, split=split,
                               seed=self.trainer_args.seed, num_samples=num_samples, placement=args.placement,
                               model_type=args.model_type, segment_size=self.segment_size)

    def collate(self):
        collate = encoder_collate if self.args.model_type == "encoder" else decoder_collate
        return functools.partial(collate, pad_token_id=self.tokenizer.pad_token_id)

    def train_batches(self, stage: Stage):
        """Training batches; generated tasks get iters * total batch samples unless num_train_samples says."""
        per_step = self.trainer_args.batch_size * self.trainer_args.gradient_accumulation_steps
        num_samples = self.args.num_train_samples or self.task.num_samples("train") or max(
            self.trainer_args.iters * per_step * self.context.world_size, per_step * self.context.world_size)
        return train_batches(self.dataset(stage, "train", num_samples), self.trainer_args, context=self.context,
                             collate_fn=self.collate(), num_workers=self.args.data_n_workers)

    def valid_batches(self, stage: Stage):
        """Validation batches over this process's share; each sample counts once over all processes."""
        return eval_batches(self.dataset(stage, "valid", self.args.num_valid_samples), self.trainer_args,
                            context=self.context, collate_fn=self.collate(), num_workers=self.args.data_n_workers)

    def trainer(self, trainer_args, valid, *, train=None, forward_kwargs=None):
        """A Trainer with the BABILong metric hooks; `train` None for evaluation only."""
        args, tokenizer = self.args, self.tokenizer
        metrics = BabilongMetrics(self.model, args.model_type, tokenizer, self.task.labels, args.show_valid_examples)
        generate_kwargs = None
        if args.model_type == "decoder":
            generate_kwargs = {"max_new_tokens": answer_room(args, tokenizer, self.task),
                               "eos_token_id": eos_token_id(tokenizer),
                               "pad_token_id": tokenizer.pad_token_id, "do_sample": False}
        optimizer = build_optimizer(args, trainer_args, self.model)
        return make_trainer(trainer_args, model=self.model, optimizer=optimizer, valid=valid, train=train,
                            keep_for_metrics_fn=metrics.keep, metrics_fn=metrics.compute,
                            forward_kwargs=forward_kwargs, generate_kwargs=generate_kwargs)


def evaluate(experiment: Experiment, stage: Stage, *, checkpoint: Path, results_dir, trained_n_segments) -> dict:
    """Evaluate the model at `stage`'s length and append a record to results_dir/results.jsonl.

    Returns:
        The record.
    """
    args, model = experiment.args, experiment.model
    model.max_n_segments = stage.n_segments
    loader = experiment.valid_batches(stage)
    show_progress = (args.model_type == "encoder" and stage.n_segments >= LONG_SAMPLE_SEGMENTS
                     and experiment.context.is_main)
    eval_args = dataclasses.replace(experiment.trainer_args, model_path=None, save_best=False, resume=False,
                                    init_checkpoint=None, use_lr_drop=False,
                                    use_generate_on_valid=args.model_type == "decoder")
    trainer = experiment.trainer(eval_args, loader, forward_kwargs={"show_progress": True} if show_progress else None)
    started = time.perf_counter()
    metrics = trainer.validate(loader, split=f"valid_{stage.n_segments}seg", write_tb=False)
    record = {"task": args.task, "model": backbone_name(dataclasses.asdict(args)), "model_type": args.model_type,
              "num_mem_tokens": args.num_mem_tokens, "memory_type": args.memory_type,
              "segment_size": experiment.segment_size,
              "n_segments": stage.n_segments, "input_seq_len": stage.input_seq_len,
              "trained_n_segments": trained_n_segments, "accuracy": metrics["exact_match"],
              "f1_micro": metrics.get("f1_micro"), "n_samples": int(metrics["n_samples"]),
              "n_labels": len(experiment.task.labels), "noise_dataset": args.noise_dataset,
              "checkpoint": str(checkpoint), "seconds": round(time.perf_counter() - started, 3),
              "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if experiment.context.is_main and results_dir is not None:
        path = append_result(results_dir, record)
        logger.info(f"{args.task} at {stage.input_seq_len:,} tokens ({stage.n_segments} segments): accuracy "
                    f"{record['accuracy']:.2f}% on {record['n_samples']} samples; appended to {path}")
    return record


def train_stage(experiment: Experiment, stage: Stage, init_dir) -> Path:
    """Train one curriculum stage in its own run folder, starting from init_dir's best checkpoint if given.

    Returns:
        The stage's run folder (None when model_path is None).
    """
    args, model = experiment.args, experiment.model
    stage_trainer_args, stage_args = stage_options(experiment.trainer_args, args, stage, init_dir)
    model_path = stage_trainer_args.model_path
    experiment.run_folder = None if model_path is None else Path(model_path)
    model.max_n_segments = stage.n_segments
    if init_dir is not None:
        load_initial_weights(model, init_dir)
    write_run_config(stage_trainer_args, stage_args)
    train, valid = experiment.train_batches(stage), experiment.valid_batches(stage)
    logger.info(f"stage: {stage.n_segments} segments, {stage.input_seq_len} task tokens per sample, run folder "
                f"{model_path}")
    trainer = experiment.trainer(stage_trainer_args, valid, train=train)
    trainer.train()
    del trainer
    return Path(model_path) if model_path is not None else None


def run_curriculum(experiment: Experiment, stages: list, extra: list) -> None:
    """Train each stage, evaluate its best checkpoint at its length, and the last one at the extra lengths.

    With --resume, a stage whose evaluation record is in its results is finished: it is neither trained nor
    evaluated again (its best checkpoint starts the next stage), so resuming is idempotent.
    """
    init_dir = experiment.args.model_cpt
    resume = experiment.trainer_args.resume
    run_dir = checkpoint = None
    for stage in stages:
        run_dir = stage_folder(experiment.trainer_args.model_path, stage.n_segments)
        finished = resume and run_dir is not None and is_evaluated(
            run_dir, n_segments=stage.n_segments, trained_n_segments=stage.n_segments)
        if finished:
            logger.info(f"stage {stage.n_segments} segments: finished in {run_dir}, skipped (--resume)")
        else:
            run_dir = train_stage(experiment, stage, init_dir)
        checkpoint = None
        if run_dir is not None and (run_dir / BEST_CHECKPOINT_NAME).is_file():
            checkpoint = load_run_weights(experiment.model, run_dir)
            init_dir = run_dir
        if not finished:
            evaluate(experiment, stage, checkpoint=checkpoint, results_dir=run_dir,
                     trained_n_segments=stage.n_segments)
    for stage in extra:
        done = resume and run_dir is not None and is_evaluated(
            run_dir, n_segments=stage.n_segments, trained_n_segments=stages[-1].n_segments)
        if stage != stages[-1] and not done:
            evaluate(experiment, stage, checkpoint=checkpoint, results_dir=run_dir,
                     trained_n_segments=stages[-1].n_segments)


def _trained_n_segments(model_cpt) -> int | None:
    if is_model_folder(model_cpt):
        return trained_values(model_cpt)["max_n_segments"]
    config_file = Path(model_cpt) / CONFIG_FILE
    if not config_file.is_file():
        return None
    return json.loads(config_file.read_text()).get("args", {}).get("max_n_segments")


def load_initial_weights(model, model_cpt) -> Path:
    """The weights of --model_cpt: a run folder's best checkpoint or a model folder's weights."""
    if is_model_folder(model_cpt):
        path = load_model_folder_weights(model, model_cpt)
        logger.info(f"model weights loaded from {path}")
        return path
    return load_run_weights(model, model_cpt)


def validate_checkpoint(experiment: Experiment, stages: list, extra: list) -> None:
    """Evaluate model_cpt's best checkpoint at the requested length(s); results go to the folder that
    `prepare_evaluation_folder` chose and locked in setup, which gets a config.json only when it is not the
    evaluated run."""
    args = experiment.args
    results_dir = experiment.run_folder
    checkpoint = load_initial_weights(experiment.model, args.model_cpt)
    if results_dir.resolve() != Path(args.model_cpt).resolve():  # the evaluated run keeps its own config.json
        write_run_config(dataclasses.replace(experiment.trainer_args, model_path=str(results_dir)), args)
    for stage in extra or stages:
        evaluate(experiment, stage, checkpoint=checkpoint, results_dir=results_dir,
                 trained_n_segments=_trained_n_segments(args.model_cpt))


def prepare_stage_folders(trainer_args, args: BabilongArgs, stages: list, is_main: bool) -> None:
    """Every stage's run folder refused or locked (`prepare_run_folder`), and with --resume checked against the
    settings it was trained with, before the first one trains."""
    for stage in stages:
        folder = stage_folder(trainer_args.model_path, stage.n_segments)
        prepare_run_folder(folder, resume=trainer_args.resume, overwrite=trainer_args.overwrite, is_main=is_main)
        if trainer_args.resume:  # a finished stage too: its results belong to its own settings
            check_resumed_settings(folder, run_values(*stage_options(trainer_args, args, stage, args.model_cpt)),
                                   BABILONG_RESUME_MAY_CHANGE)


def setup(argv=None) -> tuple:
    """Everything before training: (experiment, training stages, extra evaluation stages)."""
    trainer_args, args = parse_args(BabilongArgs, argv)
    context = start_run(trainer_args)
    tokenizer = load_tokenizer(args.tokenizer or args.from_pretrained)
    task = get_task(args.task, args.babi_path, args.max_n_facts)
    set_seed(trainer_args.seed)  # the same initial weights (classifier, memory) for runs with the same seed
    model = build_model(args, tokenizer, len(task.labels))
    stages, extra = plan_stages(args, model.segment_size, answer_room(args, tokenizer, task))
    experiment = Experiment(args, trainer_args, model, tokenizer, task, context)
    # the run folders' refusals and locks, before the background and the samples take time (and log)
    if args.validate_only:
        experiment.run_folder = prepare_evaluation_folder(trainer_args.model_path, args.model_cpt,
                                                          is_main=context.is_main)
    else:
        prepare_stage_folders(trainer_args, args, stages, context.is_main)
    if args.model_cpt:
        load_initial_weights(model, args.model_cpt)  # refuses weights of another shape before any time is spent
    experiment.valid_batches(stages[0])  # the background loads and the first sample builds, or fails
    if not args.validate_only:
        for stage in stages:  # every training story fits its stage's length, checked before anything is written
            experiment.train_batches(stage)
        if trainer_args.overwrite and context.is_main:  # every input checked: the previous runs may go
            for stage in stages:
                delete_previous_run(stage_folder(trainer_args.model_path, stage.n_segments))
    logger.info(f"{args.task} ({args.model_type}): {type(model).__name__} around {backbone_name(vars(args))}, "
                f"{sum(p.numel() for p in model.parameters()):,} parameters, segment size {model.segment_size}, "
                f"{args.num_mem_tokens} memory tokens, stages {[s.n_segments for s in stages]}")
    return experiment, stages, extra


def main(argv=None):
    """Train the curriculum (or evaluate --model_cpt); every error ends with one line on stderr, exit code 2 for
    bad input and 1 for failures at run time."""
    with holding_run_folders():  # each run folder's one-writer lock, from setup to the end
        with exit_on_bad_input():
            experiment, stages, extra = setup(argv)
        with exit_on_failure(lambda: experiment.run_folder):
            if experiment.args.validate_only:
                validate_checkpoint(experiment, stages, extra)
            else:
                run_curriculum(experiment, stages, extra)
