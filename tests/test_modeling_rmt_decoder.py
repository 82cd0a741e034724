"""Tests for the decoder memory wrapper: bare-backbone equivalence, k2, labels_mask, padding, generate."""
import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from modeling_rmt import MemoryCell, RecurrentWrapper

VOCAB_SIZE = 97
SEGMENT_SIZE = 8
MEM_TOKENS = 3
PAD_ID = 0
NEEDS_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
AUTOCAST_SETTINGS = [("cpu", torch.bfloat16), pytest.param("cuda", torch.float16, marks=NEEDS_CUDA),
                     pytest.param("cuda", torch.bfloat16, marks=NEEDS_CUDA)]


def tiny_gpt2(seed=0, tie=True):
    torch.manual_seed(seed)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB_SIZE, n_positions=64, tie_word_embeddings=tie,
                        bos_token_id=PAD_ID, eos_token_id=PAD_ID, pad_token_id=PAD_ID)
    return GPT2LMHeadModel(config).eval()


def tiny_neox(seed=0):
    torch.manual_seed(seed)
    config = GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           vocab_size=VOCAB_SIZE, max_position_embeddings=64, bos_token_id=PAD_ID,
                           eos_token_id=PAD_ID, pad_token_id=PAD_ID)
    return GPTNeoXForCausalLM(config).eval()


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         intermediate_size=64, vocab_size=VOCAB_SIZE, max_position_embeddings=64,
                         bos_token_id=PAD_ID, eos_token_id=PAD_ID, pad_token_id=PAD_ID)
    return LlamaForCausalLM(config).eval()


BACKBONES = {"gpt2": tiny_gpt2, "neox": tiny_neox, "llama": tiny_llama}


def wrap(model=None, num_mem_tokens=MEM_TOKENS, max_n_segments=4, **kwargs):
    return RecurrentWrapper(MemoryCell(model or tiny_gpt2(), num_mem_tokens), SEGMENT_SIZE, max_n_segments, **kwargs)


def random_tokens(shape, seed=1, low=1, high=VOCAB_SIZE):
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed))


def left_pad(samples):
    """Left-pad 1-D token tensors into (B, T) ids, attention mask and labels (-100 on padding)."""
    width = max(len(sample) for sample in samples)
    input_ids = torch.full((len(samples), width), PAD_ID)
    attention_mask = torch.zeros_like(input_ids)
    for row, sample in enumerate(samples):
        input_ids[row, width - len(sample):] = sample
        attention_mask[row, width - len(sample):] = 1
    return input_ids, attention_mask, input_ids.masked_fill(attention_mask == 0, -100)


def received_gradient(tensor):
    """True if any element of `tensor` got a non-zero gradient (no gradient at all counts as exactly zero)."""
    return tensor.grad is not None and torch.count_nonzero(tensor.grad) > 0


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_no_memory_one_segment_is_bare_backbone(backbone):
    wrapper = wrap(model=BACKBONES[backbone](seed=2), num_mem_tokens=0)
    bare = BACKBONES[backbone](seed=2)
    input_ids = random_tokens((2, SEGMENT_SIZE))
    with torch.no_grad():
        out = wrapper(input_ids, labels=input_ids)
        expected = bare(input_ids, labels=input_ids)
    torch.testing.assert_close(out.logits, expected.logits)
    torch.testing.assert_close(out.loss, expected.loss)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_backbones_train_with_memory(backbone):
    wrapper = wrap(model=BACKBONES[backbone]()).train()
    input_ids = random_tokens((2, 3 * SEGMENT_SIZE))
    out = wrapper(input_ids, labels=input_ids)
    out.loss.backward()
    assert out.logits.shape == (2, 3 * SEGMENT_SIZE, VOCAB_SIZE) and torch.isfinite(out.loss)
    assert received_gradient(wrapper.memory_cell.memory)


def test_memory_carries_information_only_with_memory_tokens():
    tail = random_tokens((1, SEGMENT_SIZE), seed=3)
    for num_mem_tokens, differs in [(MEM_TOKENS, True), (0, False)]:
        wrapper = wrap(num_mem_tokens=num_mem_tokens)
        with torch.no_grad():
            a = wrapper(torch.cat([random_tokens((1, SEGMENT_SIZE), seed=4), tail], dim=1)).logits[:, SEGMENT_SIZE:]
            b = wrapper(torch.cat([random_tokens((1, SEGMENT_SIZE), seed=5), tail], dim=1)).logits[:, SEGMENT_SIZE:]
        assert (not torch.allclose(a, b)) == differs


@pytest.mark.parametrize("k2, reached", [(-1, (True, True, True)), (3, (True, True, True)),
                                         (2, (False, True, True)), (1, (False, False, True))])
def test_k2_limits_gradient_to_recent_segments(k2, reached):
    wrapper = wrap(k2=k2)
    recorded = []

    def hook(module, inputs, output):
        output.retain_grad()
        recorded.append(output)

    wrapper.memory_cell.model.get_input_embeddings().register_forward_hook(hook)
    input_ids = random_tokens((2, 3 * SEGMENT_SIZE))
    labels_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    labels_mask[:, -SEGMENT_SIZE + 1:] = True  # only predictions made by the last segment's logits count
    wrapper(input_ids, labels=input_ids, labels_mask=labels_mask).loss.backward()
    assert tuple(received_gradient(output) for output in recorded) == reached


def test_labels_mask_restricts_loss():
    wrapper = wrap()
    input_ids = random_tokens((2, 20))
    labels_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    labels_mask[0, 15:] = True
    labels_mask[1, 18:] = True
    with torch.no_grad():
        out = wrapper(input_ids, labels=input_ids, labels_mask=labels_mask)
        other_labels = input_ids.masked_fill(~labels_mask, 5)  # labels outside the mask must not matter
        same = wrapper(input_ids, labels=other_labels, labels_mask=labels_mask)
    rows, positions = labels_mask.nonzero(as_tuple=True)
    expected = F.cross_entropy(out.logits[rows, positions - 1], input_ids[rows, positions])
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(same.loss, out.loss)
    # segments (right-aligned, 20 = 4 + 8 + 8): targets 15..19 and 18..19 are predicted in the last segment
    assert out.segment_token_counts.tolist() == [0, 0, 7]
    assert torch.isnan(out.segment_losses[:2]).all()
    torch.testing.assert_close(out.segment_losses[2], expected)


def test_segment_losses_weight_to_total_loss():
    wrapper = wrap()
    input_ids = random_tokens((2, 3 * SEGMENT_SIZE))
    with torch.no_grad():
        out = wrapper(input_ids, labels=input_ids)
    assert out.segment_token_counts.tolist() == [2 * SEGMENT_SIZE, 2 * SEGMENT_SIZE, 2 * (SEGMENT_SIZE - 1)]
    weighted = (out.segment_losses * out.segment_token_counts).sum() / out.segment_token_counts.sum()
    torch.testing.assert_close(weighted, out.loss)


def test_left_padding_does_not_change_results():
    wrapper = wrap()
    samples = [random_tokens((n,), seed=n) for n in (5, 13, 20)]
    input_ids, attention_mask, labels = left_pad(samples)
    with torch.no_grad():
        batched = wrapper(input_ids, attention_mask=attention_mask, labels=labels)
        singles = [wrapper(sample[None], labels=sample[None]) for sample in samples]
    for row, (sample, single) in enumerate(zip(samples, singles)):
        torch.testing.assert_close(batched.logits[row, -len(sample):], single.logits[0], atol=1e-5, rtol=0)
    counts = torch.tensor([len(sample) - 1 for sample in samples], dtype=torch.float)
    expected_loss = (torch.stack([single.loss for single in singles]) * counts).sum() / counts.sum()
    torch.testing.assert_close(batched.loss, expected_loss, atol=1e-5, rtol=0)


def test_inputs_embeds_match_input_ids():
    wrapper = wrap()
    input_ids = random_tokens((2, 20))
    with torch.no_grad():
        from_ids = wrapper(input_ids, labels=input_ids)
        embeds = wrapper.memory_cell.model.get_input_embeddings()(input_ids)
        from_embeds = wrapper(inputs_embeds=embeds, labels=input_ids)
    torch.testing.assert_close(from_embeds.logits, from_ids.logits)


def test_generate_continues_the_input():
    wrapper = wrap(segment_alignment="left")  # appending tokens keeps the earlier segment boundaries
    input_ids = random_tokens((1, 2 * SEGMENT_SIZE + 3))
    with torch.no_grad():
        generated = wrapper.generate(input_ids, max_new_tokens=4, do_sample=False, pad_token_id=PAD_ID)
        assert generated.shape == (1, 4)
        for step in range(4):
            context = torch.cat([input_ids, generated[:, :step]], dim=1)
            assert wrapper(context).logits[0, -1].argmax() == generated[0, step]


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_generate_left_padded_batch_matches_single_samples(backbone):
    wrapper = wrap(model=BACKBONES[backbone]())
    samples = [random_tokens((n,), seed=n) for n in (6, 13, 21)]
    input_ids, attention_mask, _ = left_pad(samples)
    kwargs = {"max_new_tokens": 3, "do_sample": False, "pad_token_id": PAD_ID}
    with torch.no_grad():
        batched = wrapper.generate(input_ids, attention_mask=attention_mask, **kwargs)
        singles = torch.cat([wrapper.generate(sample[None], **kwargs) for sample in samples])
    assert torch.equal(batched, singles)


def test_state_dict_round_trip():
    wrapper, restored = wrap(model=tiny_gpt2(seed=1)), wrap(model=tiny_gpt2(seed=2))
    restored.load_state_dict(wrapper.state_dict())
    assert "memory_cell.memory" in wrapper.state_dict()
    input_ids = random_tokens((1, 20))
    with torch.no_grad():
        torch.testing.assert_close(restored(input_ids).logits, wrapper(input_ids).logits)


def test_memory_init_scale_follows_embeddings():
    cell = MemoryCell(tiny_gpt2(), 64)
    embedding_std = cell.model.get_input_embeddings().weight.detach().std()
    assert cell.memory.shape == (64, 32)
    assert 0.7 < float(cell.memory.detach().std() / embedding_std) < 1.3


def test_outputs_per_segment_on_request():
    input_ids = random_tokens((1, 20))
    out = wrap()(input_ids, output_hidden_states=True)
    assert [key for key in out if key.startswith("hidden_states_")] == [f"hidden_states_{i}" for i in range(3)]
    assert out["hidden_states_1"][-1].shape == (1, SEGMENT_SIZE + 2 * MEM_TOKENS, 32)
    assert "hidden_states_0" not in wrap()(input_ids)


@pytest.mark.parametrize("device, dtype", AUTOCAST_SETTINGS)
def test_autocast_forward_backward(device, dtype):
    wrapper = wrap().to(device).train()
    input_ids = random_tokens((2, 20)).to(device)
    with torch.autocast(device, dtype=dtype):
        out = wrapper(input_ids, labels=input_ids)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(wrapper.memory_cell.memory.grad).all()


@pytest.mark.parametrize("make, message", [
    (lambda: MemoryCell(tiny_gpt2(), -1), "num_mem_tokens=-1"),
    (lambda: wrap(max_n_segments=0), "max_n_segments=0"),
    (lambda: wrap(k2=0), "k2=0"),
    (lambda: RecurrentWrapper(MemoryCell(tiny_gpt2(), 2), 0, 4), "segment_size=0"),
    (lambda: wrap(segment_alignment="middle"), "segment_alignment='middle'"),
    (lambda: wrap(max_n_segments=2)(random_tokens((1, 17))), "17 tokens"),
    (lambda: wrap()(), "exactly one of input_ids and inputs_embeds"),
])
def test_bad_input(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_backbone_without_input_embeddings():
    model = tiny_gpt2()
    model.get_input_embeddings = lambda: None
    with pytest.raises(ValueError, match="no input embeddings"):
        MemoryCell(model, MEM_TOKENS)
