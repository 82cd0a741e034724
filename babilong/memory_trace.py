"""Trace the memory state of a trained RMT encoder over the segments of long BABILong samples.

    python -m babilong.memory_trace RUN_DIR [RUN_DIR ...] [--n_segments 1755] [--n_samples 16] \
        [-o memory_trace.png] [--json memory_trace.json]
    python -m babilong.memory_trace TRACES.json [TRACES.json ...] -o memory_trace.png  # redraw saved traces

Each RUN_DIR holds model_best.pth and config.json (a run of run_finetuning_babilong_rmt.py); its validation
samples are built at --n_segments segments with the settings it was trained with, and go through the segments
together. After every segment the memory state M_t is read: the backbone's last hidden layer at the memory
positions (B, m, H) for memory tokens, every layer's associative memory A (B, L, H, F) for the associative memory
(ARMT). Two curves are kept:
- step change: ||M_t - M_{t-1}|| / ||M_t||, the mean over samples: how much one more segment of background moves
  the memory. A memory that reaches a fixed point of the background has a step change that stops shrinking
  at the level set by the background's own variation, and does not drift;
- answer separation: the mean distance between the memory states of samples with different answers divided by
  the mean distance between samples with the same answer. Above 1 the memory still tells the answers apart;
  a curve that sinks towards 1 is a memory forgetting the fact.
The curves are plotted for every RUN_DIR on one figure (log-scaled segment axis) and written as JSON; JSON files
given in place of run folders are drawn again without evaluating anything.
"""
import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from lm_experiments_tools.run_config import CONFIG_FILE

from .checkpoint_eval import checkpoint_experiment
from .plot import save_figure

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = "memory_trace.png"


def written_memory(backbone_output, num_mem_tokens: int) -> torch.Tensor:
    """(B, m, H) memory a segment wrote: the backbone's last hidden layer at the memory positions, after [CLS]."""
    return backbone_output.hidden_states[-1][:, 1:1 + num_mem_tokens].detach().float()


def segment_memory(model, backbone_output) -> torch.Tensor:
    """The memory state a segment of the encoder `model` wrote: (B, m, H) memory tokens, or the associative
    memory's A (B, L, H, F) of every layer (read while the segment is in progress, from a hook on the backbone)."""
    if model.associative is not None:
        state = model.associative.current.new_state()  # (A_1..A_L, z_1..z_L)
        return torch.stack(state[:len(state) // 2], dim=1).detach()
    return written_memory(backbone_output, model.num_mem_tokens)


def step_change(previous: torch.Tensor, current: torch.Tensor) -> float:
    """Mean over samples of ||current - previous|| / ||current||; previous, current: (B, ...) memory states."""
    difference = (current - previous).flatten(1).norm(dim=1)  # (B,)
    return (difference / current.flatten(1).norm(dim=1).clamp(min=1e-12)).mean().item()


def answer_separation(memory: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean distance between memory states (B, ...) of samples with different labels (B,) over the mean distance
    between samples with the same label; nan when either kind of pair is missing."""
    distances = torch.cdist(memory.flatten(1)[None], memory.flatten(1)[None])[0]  # (B, B)
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(len(labels), dtype=torch.bool)
    within, between = distances[same & off_diagonal], distances[~same]
    if within.numel() == 0 or between.numel() == 0:
        return float("nan")
    return (between.mean() / within.mean().clamp(min=1e-12)).item()


class MemoryRecorder:
    """Forward hook on the backbone: after each segment, the curves from the memory it wrote.

    Args:
        model: the encoder wrapper whose backbone the hook is on (`segment_memory` reads what it wrote).
        labels: (B,) answers of the samples in the batch (every sample is in every segment).
    """

    def __init__(self, model, labels: torch.Tensor):
        self.model, self.labels = model, labels
        self.previous = None
        self.curves = {"step_change": [], "answer_separation": []}

    def __call__(self, module, inputs, output):
        memory = segment_memory(self.model, output)
        if self.previous is not None:
            self.curves["step_change"].append(step_change(self.previous, memory))
        else:
            self.curves["step_change"].append(float("nan"))
        self.curves["answer_separation"].append(answer_separation(memory, self.labels))
        self.previous = memory


def trace_run(run_dir: Path, n_segments: int, n_samples: int) -> dict:
    """The curves of one checkpoint over n_segments segments of n_samples validation samples, and its accuracy."""
    trained = json.loads((run_dir / CONFIG_FILE).read_text())["args"]
    experiment, stages = checkpoint_experiment(run_dir, n_segments, n_samples, batch_size=n_samples)
    model = experiment.model.eval()
    loader = experiment.valid_batches(stages[0])
    batch = next(iter(loader))
    recorder = MemoryRecorder(model, batch["labels"])
    handle = model.model.register_forward_hook(recorder)
    try:
        with torch.no_grad():
            output = model(batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        handle.remove()
    accuracy = 100 * (output.logits.argmax(-1) == batch["labels"]).float().mean().item()
    return {"run_dir": str(run_dir), "memory_type": trained.get("memory_type", "tokens"),
            "trained_n_segments": trained.get("max_n_segments"), "n_segments": n_segments,
            "n_samples": len(batch["labels"]), "accuracy": accuracy, **recorder.curves}


def load_traces(source: Path, n_segments: int, n_samples: int) -> list:
    """The traces of a run folder (evaluated now) or of a JSON file written by --json."""
    if source.suffix == ".json":
        return json.loads(source.read_text())
    if not (source / CONFIG_FILE).is_file():
        raise ValueError(f"{source}: no {CONFIG_FILE}: expected a run folder of run_finetuning_babilong_rmt.py or a "
                         "traces .json file")
    return [trace_run(source, n_segments, n_samples)]


def plot_traces(traces: list, output) -> Path:
    """Both curves of every trace on one figure (two panels), segments on a log axis."""
    import matplotlib  # imported here: only plotting needs it
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True)
    for trace in traces:
        label = (f"{Path(trace['run_dir']).parent.name} (trained on {trace['trained_n_segments']} segments; "
                 f"{trace['accuracy']:.0f}% at {trace['n_segments']})")
        segments = range(1, len(trace["step_change"]) + 1)
        top.plot(segments, trace["step_change"], label=label)
        bottom.plot(segments, trace["answer_separation"], label=label)
    top.set_xscale("log")
    top.set_yscale("log")
    top.set_ylabel("memory step change\n||M_t - M_t-1|| / ||M_t||")
    bottom.axhline(1.0, color="grey", linestyle=":")
    bottom.set_ylabel("answer separation\n(different / same answer)")
    bottom.set_xlabel("segment")
    for axes in (top, bottom):
        axes.grid(alpha=0.3)
    top.legend(fontsize=7)
    return save_figure(figure, output)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path,
                        help="run folders with model_best.pth and config.json, or traces .json files to redraw")
    parser.add_argument("--n_segments", type=int, default=1755, help="segments per sample (default: 1755)")
    parser.add_argument("--n_samples", type=int, default=16, help="samples traced together (default: 16)")
    parser.add_argument("-o", "--output", type=Path, default=Path(DEFAULT_OUTPUT),
                        help=f"PNG to write (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--json", type=Path, default=None, help="also write the curves here (default: no file)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.n_segments < 2 or args.n_samples < 2:
            raise ValueError(f"--n_segments {args.n_segments} --n_samples {args.n_samples}: expected at least 2 each")
        traces = [trace for source in args.run_dirs for trace in load_traces(source, args.n_segments, args.n_samples)]
    except (ValueError, OSError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    for trace in traces:
        tail = trace["step_change"][-max(1, len(trace["step_change"]) // 10):]
        logger.info(f"{trace['run_dir']}: accuracy {trace['accuracy']:.1f}% at {trace['n_segments']} segments; "
                    f"step change (last 10%) {sum(tail) / len(tail):.4f}; answer separation at the end "
                    f"{trace['answer_separation'][-1]:.3f}")
    if args.json is not None:
        args.json.write_text(json.dumps(traces))
    print(f"plot written to {plot_traces(traces, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
