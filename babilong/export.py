"""Export a BABILong run folder as a Hugging Face model folder with a model card.

    python -m babilong.export RUN_DIR --out DIR [--push_to_hub USER/NAME]

RUN_DIR is a run folder of run_finetuning_babilong_rmt.py (config.json with the run's arguments, model_best.pth,
and usually results.jsonl). The model is built as the run built it (`babilong.evaluate_official.load_run`), and
DIR receives what `save_pretrained` writes (config.json, model.safetensors, the tokenizer), the model card
README.md (task, backbone, memory, curriculum, accuracy against input length, the training command) and the plot
accuracy_vs_length.png. The folder loads with `AutoModelForSequenceClassification` (encoder) or
`AutoModelForCausalLM` (decoder) `.from_pretrained(DIR)` once `modeling_rmt` is imported, and is what
`python -m babilong.answer` and `babilong.evaluate_official --model_cpt` read. `--push_to_hub` uploads DIR to a hub
repository (created if needed). Bad input stops with one line and exit code 2.
"""
import argparse
import json
import logging
import shlex
from pathlib import Path

from lm_experiments_tools.checkpoint import BEST_CHECKPOINT_NAME
from lm_experiments_tools.errors import BadInputError
from lm_experiments_tools.run_config import CONFIG_FILE
from lm_experiments_tools.runs import LOG_FORMAT, exit_on_bad_input

from . import plot
from .results import RESULTS_FILE, read_results
from .run_args import backbone_name

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
PLOT_FILE = "accuracy_vs_length.png"
ENTRY_SCRIPT = "run_finetuning_babilong_rmt.py"
NO_RESULTS = "No evaluations recorded: the run folder has no results.jsonl."


def check_run_folder(run_dir: Path) -> dict:
    """The run's config.json values; BadInputError unless run_dir is a run folder with a best checkpoint."""
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / BEST_CHECKPOINT_NAME).is_file():
        raise BadInputError(f"RUN_DIR {str(run_dir)!r}: expected a run folder with {CONFIG_FILE} and "
                            f"{BEST_CHECKPOINT_NAME} (written by {ENTRY_SCRIPT} --save_best)")
    try:
        config = json.loads((run_dir / CONFIG_FILE).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInputError(f"{run_dir / CONFIG_FILE} is not JSON ({error}): expected a run configuration") from error
    if not isinstance(config, dict) or not isinstance(config.get("args"), dict):
        raise BadInputError(f"{run_dir / CONFIG_FILE} has no args: expected the configuration {ENTRY_SCRIPT} writes")
    return config


def curriculum(run_dir: Path) -> list:
    """The stages that led to this run, first to last: [{n_segments, input_seq_len, iters, lr, folder}], found by
    following each stage's --model_cpt back to the run folder it started from."""
    stages, folder, seen = [], run_dir, set()
    while folder is not None and (folder / CONFIG_FILE).is_file() and folder.resolve() not in seen:
        seen.add(folder.resolve())
        args = json.loads((folder / CONFIG_FILE).read_text()).get("args", {})
        stages.append({"n_segments": args.get("max_n_segments"), "input_seq_len": args.get("input_seq_len"),
                       "iters": args.get("iters"), "lr": args.get("lr"), "folder": str(folder)})
        folder = Path(args["model_cpt"]) if args.get("model_cpt") else None
    return stages[::-1]


def training_command(config: dict) -> str:
    """The command that trained the run: the recorded command line, else one rebuilt from its arguments."""
    command = config.get("environment", {}).get("command")
    if command:
        return shlex.join(["python", *command])
    flags = [item for name, value in sorted(config["args"].items()) if value not in (None, False)
             for item in ([f"--{name}"] if value is True else [f"--{name}", str(value)])]
    return shlex.join(["python", ENTRY_SCRIPT, *flags])


def results_lines(run_dir: Path) -> dict:
    """The plot lines (babilong.plot.select_lines) of the run's results.jsonl; {} without one."""
    path = run_dir / RESULTS_FILE
    return plot.select_lines(read_results(path)) if path.is_file() else {}


def _curriculum_table(stages: list) -> str:
    rows = ["| stage | segments | task tokens | steps | lr |", "|---|---|---|---|---|"]
    rows += [f"| {i} | {s['n_segments']} | {s['input_seq_len']} | {s['iters']} | {s['lr']} |"
             for i, s in enumerate(stages, 1)]
    return "\n".join(rows)


def model_card(args, model, lines: dict, stages: list, command: str, plot_file: str | None) -> str:
    """The model card: metadata for the hub, then task, backbone, memory, curriculum, results and usage."""
    config = model.config
    auto_class = "AutoModelForSequenceClassification" if args.model_type == "encoder" else "AutoModelForCausalLM"
    memory = f"{config.memory_type}, {config.num_mem_tokens} memory tokens"
    if config.memory_type == "associative":
        memory += f", d_mem {config.d_mem}"
    results = plot.format_table(lines) if lines else NO_RESULTS
    figure = f"\n\n![accuracy against input length]({plot_file})" if plot_file else ""
    labels = ", ".join(config.task_labels or [])
    return f"""---
library_name: transformers
tags:
- rmt
- recurrent-memory-transformer
- babilong
---

# RMT on BABILong: {args.task}

A Recurrent Memory Transformer ({args.model_type}) trained with this repository's {ENTRY_SCRIPT}.

- Task: `{args.task}` (answers: {labels}); background text: `{args.noise_dataset}`
- Backbone: `{backbone_name(vars(args))}` (model_type `{config.backbone_model_config.model_type}`)
- Memory: {memory}
- Segments: {config.input_size} ids per backbone call, {model.segment_size} task tokens per segment; trained on \
{config.max_n_segments} segments
- Weights: the run's `{BEST_CHECKPOINT_NAME}`

## Curriculum

{_curriculum_table(stages)}

## Accuracy against input length

{results}{figure}

## Training command

```bash
{command}
```

## Use

```python
import modeling_rmt  # registers the RMT model types with transformers' Auto classes
from transformers import {auto_class}
model = {auto_class}.from_pretrained("PATH_OR_REPO")  # model.tokenizer is loaded too
```

```bash
python -m babilong.answer PATH --context story.txt --question "Where is Mary?"
```
"""


def export(run_dir, out_dir) -> Path:
    """Write the model folder of a run folder; returns out_dir."""
    from modeling_rmt import RMTForCausalLM, RMTForSequenceClassification
    from .evaluate_official import load_run
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    config = check_run_folder(run_dir)
    check_default_wrapper(config["args"])
    lines = results_lines(run_dir)
    args, tokenizer, wrapper, labels = load_run(str(run_dir))
    model_cls = RMTForSequenceClassification if args.model_type == "encoder" else RMTForCausalLM
    model = model_cls.from_wrapper(wrapper, tokenizer, task=args.task, task_labels=labels)
    model.save_pretrained(out_dir)
    plot_file = None
    if lines:
        plot.plot_lines(lines, out_dir / PLOT_FILE, f"RMT on BABILong: {args.task}")
        plot_file = PLOT_FILE
    card = model_card(args, model, lines, curriculum(run_dir), training_command(config), plot_file)
    (out_dir / CARD_FILE).write_text(card, encoding="utf-8")
    logger.info(f"model folder written to {out_dir}")
    return out_dir


def check_default_wrapper(args: dict) -> None:
    """Only the project's own wrappers have a Hugging Face form: refuse a run of other classes before any is
    imported."""
    for name in ("model_cls", "memory_cell_cls", "backbone_cls"):
        value = args.get(name)
        default = {"memory_cell_cls": "modeling_rmt:MemoryCell"}.get(name)
        if value not in (None, default):
            raise BadInputError(f"the run's --{name} is {value!r}: expected the default (the exported model "
                                "rebuilds the project's own wrapper)")


def push_folder(out_dir: Path, repo_id: str) -> str:
    """Upload the model folder to the hub repository repo_id (created if needed); returns the commit URL."""
    from huggingface_hub import HfApi
    api = HfApi()
    repo_id = api.create_repo(repo_id, exist_ok=True).repo_id
    return str(api.upload_folder(repo_id=repo_id, folder_path=str(out_dir), commit_message="Upload RMT model"))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="run folder with config.json and model_best.pth")
    parser.add_argument("--out", required=True, help="model folder to write")
    parser.add_argument("--push_to_hub", default=None, metavar="REPO_ID",
                        help="also upload the folder to this hub repository (default: no upload)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    with exit_on_bad_input():
        out_dir = export(args.run_dir, args.out)
        if args.push_to_hub:
            logger.info(f"uploaded to {push_folder(out_dir, args.push_to_hub)}")
    print(out_dir)


if __name__ == "__main__":
    main()
