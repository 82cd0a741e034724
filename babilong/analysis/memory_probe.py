"""Linear probe of a checkpoint's memory: does what it wrote before the last segment hold every person's place?

For checkpoints of tasks whose facts are moves (qa1, memorize).

    python -m babilong.analysis.memory_probe RUN_DIR [--n_segments 2] [--n_samples 400]

A question whose answer lies in an earlier segment can only be answered if the memory written there names the
place of the person asked about; the question comes at the end, so the memory has to hold the place of every
person who has moved. For each segment t < n_segments and each person, a logistic regression is fitted on the
memory state after segment t (its m x H values) of N_TRAIN training samples, to predict the person's place as of the
facts that start in segments 1..t ("nowhere" before their first move), and scored on n_samples validation samples.
High probe accuracy with low accuracy on the questions answered through memory
(`babilong.analysis.fact_position`) means the memory holds the place and the last segment fails to read it;
low probe accuracy means the memory never wrote it. The majority place of each person is printed beside it.
"""
import re
import sys
from pathlib import Path

import numpy as np
import torch

from babilong.checkpoint_eval import checkpoint_experiment, run_folder_main
from babilong.memory_trace import written_memory

# the moves of qa1 and memorize: "Mary went back to the kitchen."
MOVE = re.compile(r"^(\w+) (?:moved|went back|went|journeyed|travelled) to the (\w+)\.$")
NOWHERE = "nowhere"
N_TRAIN = 1500  # training samples the probes are fitted on: ~1 per memory value of 4 x 384


def places_after(built, end: int) -> dict:
    """{person: place} after the moves of a built sample that start before token `end`."""
    places = {}
    for fact, start in zip(built.task_sample.facts, built.fact_positions):
        move = MOVE.match(fact)
        if move is None:
            raise ValueError(f"fact {fact!r} is not a move (`X went to the P.`): expected a checkpoint of a task "
                             "whose facts are moves (qa1, memorize)")
        if start < end:
            places[move.group(1)] = move.group(2)
    return places


def memory_states(experiment, dataset, batch_size: int = 64) -> torch.Tensor:
    """(n_samples, n_segments - 1, m * H) memory written after each segment but the last."""
    model, m = experiment.model.eval(), experiment.args.num_mem_tokens
    written = []
    handle = model.model.register_forward_hook(
        lambda module, inputs, output: written.append(written_memory(output, m).flatten(1)))
    states, collate = [], experiment.collate()
    try:
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
                written.clear()
                model(batch["input_ids"], attention_mask=batch["attention_mask"])
                states.append(torch.stack(written[:-1], dim=1))  # every sample fills every segment
    finally:
        handle.remove()
    return torch.cat(states)


def probe_data(experiment, stage, split: str, n_samples: int, n_segments: int) -> tuple:
    """(memory states (N, n_segments - 1, m * H), [per segment: [{person: place}] of the N samples])."""
    dataset = experiment.dataset(stage, split, n_samples)
    built = [dataset.build(i) for i in range(len(dataset))]
    places = [[places_after(sample, (t + 1) * experiment.segment_size) for sample in built]
              for t in range(n_segments - 1)]
    return memory_states(experiment, dataset), places


def evaluate(run_dir: Path, n_segments: int, n_samples: int, n_train: int = N_TRAIN) -> dict:
    """Probe accuracy per segment and person on n_samples validation samples, fitted on n_train training samples."""
    from sklearn.linear_model import LogisticRegression  # imported here: only this probe needs it
    if n_segments < 2:
        raise ValueError(f"--n_segments {n_segments}: expected at least 2 (memory is written before the last)")
    experiment, stages = checkpoint_experiment(run_dir, n_segments, n_samples, batch_size=64)
    train_x, train_places = probe_data(experiment, stages[0], "train", n_train, n_segments)
    test_x, test_places = probe_data(experiment, stages[0], "valid", n_samples, n_segments)
    people = sorted({person for sample in train_places[-1] for person in sample})
    by_segment = {}
    for t in range(n_segments - 1):
        scores = {}
        for person in people:
            train_y = np.array([sample.get(person, NOWHERE) for sample in train_places[t]])
            test_y = np.array([sample.get(person, NOWHERE) for sample in test_places[t]])
            moved = test_y != NOWHERE
            if len(set(train_y)) < 2 or not moved.any():
                continue  # nothing to tell apart, or nobody to score
            probe = LogisticRegression(max_iter=2000).fit(train_x[:, t].numpy(), train_y)
            predicted = probe.predict(test_x[:, t].numpy())
            values, counts = np.unique(train_y[train_y != NOWHERE], return_counts=True)
            scores[person] = {"accuracy": 100 * float((predicted[moved] == test_y[moved]).mean()),
                              "majority": 100 * float((test_y[moved] == values[counts.argmax()]).mean()),
                              "n_test": int(moved.sum())}
        by_segment[str(t + 1)] = scores
    return {"run_dir": str(run_dir), "n_segments": n_segments, "n_train": n_train, "n_test": len(test_x),
            "after_segment": by_segment}


if __name__ == "__main__":
    sys.exit(run_folder_main(__doc__.splitlines()[0], evaluate, default_n_segments=2, default_n_samples=400))
