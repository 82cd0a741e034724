"""Tests for the encoder memory wrapper: segmentation, layout, batching, BPTT depth, losses, bad input."""
import math

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

from modeling_rmt import RMTEncoderForSequenceClassification
from modeling_rmt.segments import segment_boundaries

VOCAB_SIZE = 200
MEM_TOKENS = 3
INPUT_SIZE = 16  # segment_size = 16 - 3 - 3 = 10
SEGMENT_SIZE = INPUT_SIZE - MEM_TOKENS - 3
NEEDS_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
AUTOCAST_SETTINGS = [("cpu", torch.bfloat16), pytest.param("cuda", torch.float16, marks=NEEDS_CUDA),
                     pytest.param("cuda", torch.bfloat16, marks=NEEDS_CUDA)]


class TinyTokenizer:
    """The parts of a Hugging Face tokenizer the wrapper reads, with BERT-style special ids."""

    def __init__(self, vocab_size=VOCAB_SIZE, cls=101, sep=102, pad=0):
        self.vocab_size, self.cls_token_id, self.sep_token_id, self.pad_token_id = vocab_size, cls, sep, pad
        self.bos_token_id = self.eos_token_id = None

    def __len__(self):
        return self.vocab_size


def tiny_bert(num_labels=3, seed=0, attention="sdpa"):
    torch.manual_seed(seed)
    config = BertConfig(attn_implementation=attention, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=VOCAB_SIZE, max_position_embeddings=64, num_labels=num_labels,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config).eval()


def wrap(model=None, num_mem_tokens=MEM_TOKENS, max_n_segments=8, **kwargs):
    return RMTEncoderForSequenceClassification(model or tiny_bert(), num_mem_tokens, TinyTokenizer(), INPUT_SIZE,
                                               max_n_segments, **kwargs)


def random_tokens(length, low=110, high=VOCAB_SIZE, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (length,), generator=generator)


def embedding_outputs(wrapper):
    """Record the (b, input_size, H) word-embedding outputs of every segment, with their gradients retained."""
    recorded = []

    def hook(module, inputs, output):
        if output.dim() == 3:
            if output.requires_grad:
                output.retain_grad()
            recorded.append((inputs[0], output))

    wrapper.model.get_input_embeddings().register_forward_hook(hook)
    return recorded


def received_gradient(tensor):
    """True if any element of `tensor` got a non-zero gradient (no gradient at all counts as exactly zero)."""
    return tensor.grad is not None and torch.count_nonzero(tensor.grad) > 0


@pytest.mark.parametrize("alignment", ["right", "left", "center"])
def test_segment_boundaries_cover_each_sample(alignment):
    lengths = torch.tensor([0, 1, 9, 10, 11, 25, 40])
    starts, ends, n_segments = segment_boundaries(lengths, 10, alignment)
    assert n_segments.tolist() == [max(1, math.ceil(n / 10)) for n in lengths.tolist()]
    assert starts.shape == (7, 4)
    for n, k, row_starts, row_ends in zip(lengths.tolist(), n_segments.tolist(), starts.tolist(), ends.tolist()):
        spans = list(zip(row_starts, row_ends))
        assert all(start == end == 0 for start, end in spans[:4 - k])  # leading empty slots
        used = spans[4 - k:]
        assert used[0][0] == 0 and used[-1][1] == n
        assert all(prev[1] == nxt[0] for prev, nxt in zip(used, used[1:]))
        sizes = [end - start for start, end in used]
        assert max(sizes) <= 10
        if alignment == "right":
            assert all(size == 10 for size in sizes[1:])
        elif alignment == "left":
            assert all(size == 10 for size in sizes[:-1])
        else:
            assert max(sizes) - min(sizes) <= 1


def test_paper_segment_size():
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        vocab_size=VOCAB_SIZE, max_position_embeddings=512)
    wrapper = RMTEncoderForSequenceClassification(BertForSequenceClassification(config), 10, TinyTokenizer(), 512, 2)
    assert wrapper.segment_size == 499
    assert wrapper.model.get_input_embeddings().num_embeddings == VOCAB_SIZE + 10
    assert wrapper.mem_token_ids.tolist() == list(range(VOCAB_SIZE, VOCAB_SIZE + 10))


def test_segment_layout_and_dropped_special_tokens():
    wrapper = wrap()
    recorded = embedding_outputs(wrapper)
    tokens = random_tokens(14)
    input_ids = torch.cat([torch.tensor([101]), tokens[:5], torch.tensor([102]), tokens[5:], torch.tensor([102, 0, 0])])
    with torch.no_grad():
        wrapper(input_ids[None])
    mem, cls, sep, pad = list(range(VOCAB_SIZE, VOCAB_SIZE + MEM_TOKENS)), 101, 102, 0
    first, second = (ids[0].tolist() for ids, _ in recorded)
    # right alignment: 14 tokens -> a partial segment of 4, then a full one of 10
    assert first == [cls, *mem, sep, *tokens[:4].tolist(), sep] + [pad] * 6
    assert second == [cls, *mem, sep, *tokens[4:].tolist(), sep]


@pytest.mark.parametrize("alignment", ["right", "left", "center"])
def test_batch_matches_single_samples(alignment):
    wrapper = wrap(segment_alignment=alignment)
    lengths = [7, 23, 41]
    samples = [random_tokens(n, seed=n) for n in lengths]
    width = max(lengths) + 2
    batch = torch.zeros(len(samples), width, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, sample in enumerate(samples):
        batch[row, :len(sample) + 2] = torch.cat([torch.tensor([101]), sample, torch.tensor([102])])
        mask[row, :len(sample) + 2] = 1
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        batched = wrapper(batch, attention_mask=mask, labels=labels)
        singles = [wrapper(sample[None], labels=labels[row:row + 1]) for row, sample in enumerate(samples)]
    assert [key for key in batched if key.startswith("loss_")] == ["loss_0", "loss_1", "loss_2", "loss_3", "loss_4"]
    torch.testing.assert_close(batched.logits, torch.cat([s.logits for s in singles]), atol=1e-5, rtol=0)
    # the last slot holds every sample: its loss is the mean of the samples' own last-segment losses
    torch.testing.assert_close(batched.loss, torch.stack([s.loss for s in singles]).mean(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("bptt_depth, first_reached, second_reached", [(-1, True, True), (2, True, True),
                                                                       (1, False, True), (0, False, False)])
def test_bptt_depth_limits_gradient(bptt_depth, first_reached, second_reached):
    wrapper = wrap(bptt_depth=bptt_depth)
    recorded = embedding_outputs(wrapper)
    wrapper(random_tokens(3 * SEGMENT_SIZE)[None], labels=torch.tensor([1])).loss.backward()
    first, second, last = (received_gradient(output) for _, output in recorded)
    assert (first, second, last) == (first_reached, second_reached, True)


def test_sum_loss_is_mean_of_segment_losses():
    wrapper = wrap(sum_loss=True)
    out = wrapper(random_tokens(25)[None], labels=torch.tensor([2]))
    segment_losses = [out[f"loss_{i}"] for i in range(3)]
    assert "loss_3" not in out
    torch.testing.assert_close(out.loss, torch.stack(segment_losses).mean())
    last_only = wrap(sum_loss=False)(random_tokens(25)[None], labels=torch.tensor([2]))
    torch.testing.assert_close(last_only.loss, last_only["loss_2"])


def test_no_memory_is_bare_backbone():
    wrapper = wrap(model=tiny_bert(seed=3), num_mem_tokens=0)
    bare = tiny_bert(seed=3)
    tokens = random_tokens(wrapper.segment_size)
    assert wrapper.segment_size == INPUT_SIZE - 2
    with torch.no_grad():
        out = wrapper(tokens[None], labels=torch.tensor([1]))
        expected = bare(torch.cat([torch.tensor([101]), tokens, torch.tensor([102])])[None], labels=torch.tensor([1]))
    torch.testing.assert_close(out.logits, expected.logits)
    torch.testing.assert_close(out.loss, expected.loss)


def test_max_n_segments_truncates_and_can_be_changed():
    wrapper = wrap(max_n_segments=2)
    tokens = random_tokens(5 * SEGMENT_SIZE)[None]
    with torch.no_grad():
        assert sum(key.startswith("loss_") for key in wrapper(tokens, labels=torch.tensor([0]))) == 2
        wrapper.max_n_segments = 5
        assert sum(key.startswith("loss_") for key in wrapper(tokens, labels=torch.tensor([0]))) == 5


def test_memory_carries_information_across_segments():
    wrapper = wrap()
    tail = random_tokens(SEGMENT_SIZE, seed=5)
    with torch.no_grad():
        a = wrapper(torch.cat([random_tokens(SEGMENT_SIZE, seed=6), tail])[None]).logits
        b = wrapper(torch.cat([random_tokens(SEGMENT_SIZE, seed=7), tail])[None]).logits
    assert not torch.allclose(a, b)


def test_state_dict_round_trip_and_tuple_output():
    wrapper = wrap(model=tiny_bert(seed=1))
    restored = wrap(model=tiny_bert(seed=2))
    restored.load_state_dict(wrapper.state_dict())
    tokens = random_tokens(30)[None]
    with torch.no_grad():
        torch.testing.assert_close(restored(tokens).logits, wrapper(tokens).logits)
        loss, logits, *per_segment = wrapper(tokens, labels=torch.tensor([0]), return_dict=False)
    assert logits.shape == (1, 3) and len(per_segment) == 3


def test_outputs_per_segment_on_request():
    out = wrap(model=tiny_bert(attention="eager"))(random_tokens(25)[None], output_hidden_states=True, output_attentions=True, show_progress=True)
    assert len(out["hidden_states_2"]) == 3 and out["hidden_states_2"][-1].shape == (1, INPUT_SIZE, 32)
    assert out["attentions_0"][0].shape == (1, 2, INPUT_SIZE, INPUT_SIZE)
    assert "hidden_states_0" not in wrap()(random_tokens(25)[None])


def test_roberta_backbone():
    torch.manual_seed(0)
    config = RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           vocab_size=VOCAB_SIZE, max_position_embeddings=INPUT_SIZE + 2, num_labels=2)
    tokenizer = TinyTokenizer(cls=0, pad=1, sep=2)
    wrapper = RMTEncoderForSequenceClassification(RobertaForSequenceClassification(config), 2, tokenizer,
                                                  INPUT_SIZE, 4)
    out = wrapper(random_tokens(30)[None], labels=torch.tensor([1]))
    out.loss.backward()
    assert out.logits.shape == (1, 2) and torch.isfinite(out.loss)


@pytest.mark.parametrize("device, dtype", AUTOCAST_SETTINGS)
def test_autocast_forward_backward(device, dtype):
    wrapper = wrap().to(device).train()
    with torch.autocast(device, dtype=dtype):
        out = wrapper(random_tokens(25)[None].repeat(2, 1).to(device), labels=torch.tensor([0, 1], device=device))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert torch.isfinite(wrapper.model.get_input_embeddings().weight.grad).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"input_size": 6}, "input_size=6"),
    ({"input_size": 100}, "max_position_embeddings=64"),
    ({"num_mem_tokens": -1}, "num_mem_tokens=-1"),
    ({"max_n_segments": 0}, "max_n_segments=0"),
    ({"bptt_depth": -2}, "bptt_depth=-2"),
    ({"segment_alignment": "middle"}, "segment_alignment='middle'"),
])
def test_bad_arguments(kwargs, message):
    arguments = {"num_mem_tokens": MEM_TOKENS, "tokenizer": TinyTokenizer(), "input_size": INPUT_SIZE,
                 "max_n_segments": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        RMTEncoderForSequenceClassification(tiny_bert(), **arguments)


def test_tokenizer_without_special_tokens():
    tokenizer = TinyTokenizer()
    tokenizer.cls_token_id = None
    with pytest.raises(ValueError, match="cls_token_id"):
        RMTEncoderForSequenceClassification(tiny_bert(), MEM_TOKENS, tokenizer, INPUT_SIZE, 2)


def test_backbone_without_input_embeddings():
    model = tiny_bert()
    model.get_input_embeddings = lambda: None
    with pytest.raises(ValueError, match="no input embeddings"):
        RMTEncoderForSequenceClassification(model, MEM_TOKENS, TinyTokenizer(), INPUT_SIZE, 2)
