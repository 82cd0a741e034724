"""Multi-process training with torchrun on CPU (gloo): two processes with per-process batch 2 take the same steps as
one process with batch 4, agree on the metrics, and only rank 0 writes files."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lm_experiments_tools import TrainerArgs
from trainer_scripts.tiny_task import build_trainer, dataset_metrics, flat_parameters, keep_errors

SCRIPT = Path(__file__).parent / "trainer_scripts" / "train_tiny.py"
COMMON_FLAGS = {"iters": 3, "lr": 0.05, "valid_interval": 3, "save_interval": 3, "seed": 5}


@pytest.mark.slow
def test_two_processes_match_one_process_with_double_batch(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    flags = [item for name, value in COMMON_FLAGS.items() for item in (f"--{name}", str(value))]
    command = [torchrun, "--standalone", "--nproc_per_node", "2", str(SCRIPT), *flags, "--batch_size", "2",
               "--dropout", "0", "--shuffle", "false", "--model_path", str(tmp_path / "ddp"),
               "--params_out", str(tmp_path / "params.pt"), "--results_out", str(tmp_path / "results")]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stdout + completed.stderr

    single = build_trainer(TrainerArgs(batch_size=4, **COMMON_FLAGS), shuffle=False, keep_for_metrics_fn=keep_errors,
                           metrics_fn=dataset_metrics)
    single_results = single.train()
    ddp_parameters = torch.load(tmp_path / "params.pt", weights_only=True)
    assert not torch.allclose(ddp_parameters, flat_parameters(build_trainer(TrainerArgs()).model))
    torch.testing.assert_close(ddp_parameters, flat_parameters(single.model), rtol=1e-5, atol=1e-7)

    rank_results = [json.loads((tmp_path / f"results.rank{rank}.json").read_text()) for rank in (0, 1)]
    assert rank_results[0] == rank_results[1]  # every process took its decisions on the same numbers
    assert rank_results[0]["n_samples"] == rank_results[0]["n_distinct"] == 24  # both shards gathered
    assert rank_results[0]["mae"] == pytest.approx(single_results["mae"], rel=1e-5)
    assert len(list((tmp_path / "ddp").glob("events.out.tfevents.*"))) == 1  # rank 0 alone writes
    assert (tmp_path / "ddp" / "model_3.pth").exists()
