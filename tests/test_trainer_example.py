"""The README's example script trains its tiny classifier offline and writes the run folder."""
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "train_tiny_classifier.py"


@pytest.mark.slow
def test_example_learns_and_writes_the_run_folder(tmp_path, monkeypatch):
    run = tmp_path / "run_1"
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--model_path", str(run), "--batch_size", "32", "--iters", "40",
                                      "--lr", "2e-3", "--valid_interval", "20", "--log_interval", "20",
                                      "--save_best", "--optimize_metric", "accuracy", "--optimize_mode", "max",
                                      "--n_valid", "256"])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    best = torch.load(run / "model_best.pth", weights_only=True)
    assert best["metrics"]["accuracy"] >= 0.9  # chance is 0.5
    assert json.loads((run / "config.json").read_text())["args"]["iters"] == 40
    assert list(run.glob("events.out.tfevents.*")) and (run / "git.diff").exists()
