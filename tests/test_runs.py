"""Tests of the run plumbing (lm_experiments_tools.runs), the shared RMT options (rmt_experiments) and of the
entry scripts' command lines."""
import dataclasses

import pytest
from transformers import HfArgumentParser

from arxiv_lm.run_args import ArxivArgs
from babilong.run_args import BabilongArgs
from lm_experiments_tools import TrainerArgs
from lm_experiments_tools.distributed import DistributedContext
from lm_experiments_tools.errors import BadInputError
from lm_experiments_tools.runs import exit_on_bad_input, process_shard


@pytest.mark.parametrize("n_samples", [0, 1, 5, 7, 8])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_process_shards_cover_every_sample_once_in_order(n_samples, world_size):
    shards = [process_shard(list(range(n_samples)), DistributedContext(rank, rank, world_size, "cpu"))
              for rank in range(world_size)]
    assert [sample for shard in shards for sample in shard] == list(range(n_samples))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.parametrize("bptt_depth, bptt_segments", [(-1, -1), (0, 1), (3, 4)])
def test_bptt_depth_counts_one_transition_fewer_than_segments(bptt_depth, bptt_segments):
    """The two scripts' flags mean the same segments (the conversion itself: test_memory_config)."""
    assert BabilongArgs(bptt_depth=bptt_depth).bptt_segments == ArxivArgs(k2=bptt_segments).bptt_segments


@pytest.mark.parametrize("args_cls", [ArxivArgs, BabilongArgs])
def test_help_states_each_default_once(args_cls):
    help_text = HfArgumentParser((TrainerArgs, args_cls)).format_help()
    n_options = len(dataclasses.fields(TrainerArgs)) + len(dataclasses.fields(args_cls))
    assert help_text.count("(default:") == n_options
    words = " ".join(help_text.split())
    assert "give its checkpoint file to --init_checkpoint instead" in words  # in --model_cpt's help
    assert "use the entry scripts' --model_cpt" in words  # in --init_checkpoint's help


def test_bad_input_ends_with_one_line_and_exit_code_2(capsys):
    with pytest.raises(SystemExit) as exit_info, exit_on_bad_input():
        raise BadInputError("--k2 0: expected\n  a positive integer")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --k2 0: expected a positive integer\n"
