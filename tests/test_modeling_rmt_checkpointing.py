"""Segment checkpointing of both memory wrappers: loss and gradients equal full BPTT (dropout, truncated BPTT,
sum_loss, labels_mask, padded batches, autocast, DDP), activations are not kept per segment, bad input."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from rmt_checkpointing_cases import (
    CASES,
    FORWARD_SEED,
    decoder_batch,
    encoder_batch,
    loss_and_gradients,
    tiny_associative_decoder,
    tiny_associative_encoder,
    tiny_decoder,
    tiny_encoder,
)

CASES_SCRIPT = Path(__file__).parent / "rmt_checkpointing_cases.py"
BUILDERS = {"encoder": (tiny_encoder, encoder_batch, 10), "decoder": (tiny_decoder, decoder_batch, 8)}
# the associative memory keeps its state in float32 under autocast (docs/design.md): checked in training too
AUTOCAST_BUILDERS = {**{kind: builder[:2] for kind, builder in BUILDERS.items()},
                     "encoder_associative": (tiny_associative_encoder, encoder_batch),
                     "decoder_associative": (tiny_associative_decoder, decoder_batch)}


def assert_same_step(full, checkpointed, rtol=1e-5, atol=1e-7):
    (full_loss, full_grads), (loss, grads) = full, checkpointed
    torch.testing.assert_close(loss, full_loss, rtol=rtol, atol=atol)
    assert grads.keys() == full_grads.keys()
    for name in full_grads:
        torch.testing.assert_close(grads[name], full_grads[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("case", CASES)
def test_gradients_equal_full_bptt(case):
    build, options, make_batch = CASES[case]
    batch = make_batch()
    full = loss_and_gradients(build(False, **options), batch)
    assert_same_step(full, loss_and_gradients(build(True, **options), batch))
    # the dropout masks matter: another seed's masks give another gradient, which the equality above would catch
    other_model = build(False, **options)
    torch.manual_seed(123)
    other_model.train()(**batch)["loss"].backward()
    name, grad = next(iter(full[1].items()))
    assert not torch.allclose(dict(other_model.named_parameters())[name].grad, grad)


@pytest.mark.parametrize("kind", AUTOCAST_BUILDERS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_gradients_equal_full_bptt(kind, dtype):
    build, make_batch = AUTOCAST_BUILDERS[kind]
    batch = make_batch([30, 17])
    full = loss_and_gradients(build(False), batch, autocast_dtype=dtype)
    assert torch.isfinite(full[0]) and all(torch.isfinite(grad).all() for grad in full[1].values())
    if "associative" in kind:  # the memory's projections train under autocast
        assert any(name.startswith(("associative.", "memory_cell.associative.")) and grad.abs().sum() > 0
                   for name, grad in full[1].items())
    assert_same_step(full, loss_and_gradients(build(True), batch, autocast_dtype=dtype))


@pytest.mark.parametrize("kind", BUILDERS)
def test_evaluation_without_gradients_is_unchanged(kind):
    build, make_batch, _ = BUILDERS[kind]
    batch = make_batch([30, 17])
    with torch.no_grad():
        expected, actual = build(False).eval()(**batch), build(True).eval()(**batch)
    torch.testing.assert_close(actual.logits, expected.logits)
    torch.testing.assert_close(actual.loss, expected.loss)


@pytest.mark.parametrize("return_logits", [True, False])
def test_decoder_logits_are_detached_or_left_out(return_logits):
    batch = decoder_batch([30, 17])
    torch.manual_seed(FORWARD_SEED)
    full = tiny_decoder(False).train()(**batch)
    full_step = loss_and_gradients(tiny_decoder(False), batch)
    checkpointed = loss_and_gradients(tiny_decoder(True), {**batch, "return_logits": return_logits})
    assert_same_step(full_step, checkpointed)
    torch.manual_seed(FORWARD_SEED)
    output = tiny_decoder(True).train()(**batch, return_logits=return_logits)
    if return_logits:
        assert not output.logits.requires_grad
        torch.testing.assert_close(output.logits, full.logits.detach())
    else:
        assert output.logits is None
    torch.testing.assert_close(output.segment_losses, full.segment_losses, equal_nan=True)


def saved_bytes_per_step(model, batch):
    """Bytes of the distinct tensors autograd saves (outside checkpointed regions) during one forward pass."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model.train()(**batch)["loss"]
    loss.backward()  # the saved tensors were usable: the step completes
    return sum(storages.values())


@pytest.mark.parametrize("kind", BUILDERS)
def test_activations_are_not_kept_for_every_segment(kind):
    build, make_batch, segment_size = BUILDERS[kind]
    counts = (2, 8)
    saved = {flag: [saved_bytes_per_step(build(flag), make_batch([n * segment_size])) for n in counts]
             for flag in (False, True)}
    growth = {flag: (sizes[1] - sizes[0]) / (counts[1] - counts[0]) for flag, sizes in saved.items()}
    model = build(True)
    hidden_size = next(model.parameters()).shape[-1]
    # per extra segment: at most the memory state (m x H floats) plus the segment's ids, mask and targets
    state_and_inputs = 3 * hidden_size * 4 + 4 * segment_size * 8
    assert growth[True] <= state_and_inputs, growth
    assert growth[False] > 20 * state_and_inputs, growth  # full BPTT keeps the activations of every segment


@pytest.mark.parametrize("kind", BUILDERS)
@pytest.mark.parametrize("flag", ["output_attentions", "output_hidden_states"])
def test_per_segment_outputs_are_refused(kind, flag):
    build, make_batch, _ = BUILDERS[kind]
    with pytest.raises(ValueError, match="segment_checkpointing"):
        build(True)(**make_batch([20]), **{flag: True})


@pytest.mark.parametrize("kind", BUILDERS)
def test_option_must_be_a_bool(kind):
    with pytest.raises(ValueError, match="segment_checkpointing='yes'"):
        BUILDERS[kind][0]("yes")


@pytest.mark.slow
def test_ddp_gradients_equal_full_bptt(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    command = [torchrun, "--standalone", "--nproc_per_node", "2", str(CASES_SCRIPT), str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for rank_results in results:
        assert rank_results.keys() == CASES.keys()
        for case, result in rank_results.items():
            assert result["relative_difference"] <= 1e-5, (case, result)
            assert result["loss_difference"] <= 1e-5, (case, result)
            assert result["ranks_agree"], case  # gradients were all-reduced: both processes hold the same


@pytest.mark.slow
@pytest.mark.parametrize("script", ["babilong", "arxiv"])
@pytest.mark.parametrize("flag", [[], ["--segment_checkpointing"]])
def test_run_scripts_pass_the_flag_to_the_wrapper(script, flag):
    from arxiv_lm import experiment as arxiv_experiment
    from arxiv_lm.run_args import ArxivArgs
    from babilong import experiment as babilong_experiment
    from babilong.run_args import BabilongArgs
    from rmt_experiments.offline_model import load_tokenizer
    from rmt_experiments.run_args import parse_args

    argv = ["--input_size", "32", "--num_mem_tokens", "2", *flag]
    if script == "babilong":
        _, args = parse_args(BabilongArgs, argv)
        model = babilong_experiment.build_model(args, load_tokenizer(None), n_labels=3)
    else:
        _, args = parse_args(ArxivArgs, argv)
        model = arxiv_experiment.build_model(args, load_tokenizer(None))
    assert model.segment_checkpointing is bool(flag)
