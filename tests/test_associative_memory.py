"""The associative memory (ARMT) of both wrappers: the equations (against a reference written out here, step by
step), the delta rule, the state, truncated BPTT, batches of samples of different lengths, autocast, bad input."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modeling_rmt import RMTEncoderForSequenceClassification
from modeling_rmt.associative import EPS, dpfp, read_memory, write_memory
from rmt_checkpointing_cases import (
    DECODER_SEGMENT_SIZE,
    INPUT_SIZE,
    MEM_TOKENS,
    TinyTokenizer,
    decoder_batch,
    encoder_batch,
    random_ids,
    tiny_associative_decoder,
    tiny_associative_encoder,
)

ENCODER_SEGMENT_SIZE = INPUT_SIZE - MEM_TOKENS - 3
CLS_ID, SEP_ID = TinyTokenizer.cls_token_id, TinyTokenizer.sep_token_id


# ---- a reference written from the equations, one key and one layer at a time -----------------------------------

def reference_dpfp(x, nu=3):
    """DPFP-nu feature by feature: with r = [relu(x), relu(-x)] (2d), feature (j, a) = r[a] * r[(a - j) mod 2d]."""
    r = torch.cat([x.clamp(min=0), (-x).clamp(min=0)], dim=-1)
    width = r.shape[-1]
    return torch.cat([torch.stack([r[..., a] * r[..., (a - j) % width] for a in range(width)], dim=-1)
                      for j in range(1, nu + 1)], dim=-1)


def reference_read(layer, A, z, hidden):
    """y_t = A phi(W_Q x_t) / (z^T phi(W_Q x_t) + eps) for each token t; A (H, F), z (F,), hidden (T, H)."""
    rows = []
    for x in hidden:
        features = reference_dpfp(layer.query.weight @ x)
        rows.append(A @ features / (z @ features + EPS))
    return torch.stack(rows)


def reference_write(layer, A, z, memory_outputs):
    """The delta-rule write of eqs. 3-4 for one sample: vbar_i and gamma_i from the state before the segment."""
    new_A, new_z = A.clone(), z.clone()
    for m in memory_outputs:
        key = reference_dpfp(layer.key.weight @ m)
        value = layer.value.weight @ m
        beta = torch.sigmoid(layer.beta.weight[0] @ m + layer.beta.bias[0])
        previous = A @ key / (z @ key + EPS)
        new_A = new_A + beta * torch.outer(value - previous, key)
        gamma = (1 - (z @ key) / (key @ key + EPS)).clamp(0, 1).detach()
        new_z = new_z + gamma * key
    return new_A, new_z


def reference_layers(memory, blocks, hidden, states, write, mask=None):
    """Run the blocks over one sample's (T, H) segment, each reading and then writing its memory state."""
    new_states = []
    for layer, block, (A, z) in zip(memory.layers, blocks, states):
        hidden = hidden + reference_read(layer, A, z, hidden)
        output = block(hidden[None], None, mask) if mask is not None else block(hidden[None], None)
        hidden = (output[0] if isinstance(output, tuple) else output)[0]
        new_states.append(reference_write(layer, A, z, hidden[write]))
    return hidden, new_states


def empty_states(memory):
    return [(torch.zeros(memory.hidden_size, memory.n_features), torch.zeros(memory.n_features))
            for _ in memory.layers]


def reference_encoder_logits(wrapper, tokens):
    """Logits of one sample of full segments: `[CLS] mem [SEP] tokens [SEP]` each, the last segment classified."""
    bert = wrapper.model.bert
    states = empty_states(wrapper.associative)
    for segment in tokens.split(ENCODER_SEGMENT_SIZE):
        ids = torch.cat([torch.tensor([CLS_ID]), wrapper.mem_token_ids, torch.tensor([SEP_ID]), segment,
                         torch.tensor([SEP_ID])])
        hidden = bert.embeddings(input_ids=ids[None])[0]
        hidden, states = reference_layers(wrapper.associative, bert.encoder.layer, hidden, states,
                                          write=slice(1, 1 + MEM_TOKENS))
    return wrapper.model.classifier(bert.pooler(hidden[None]))[0]


def reference_decoder_logits(wrapper, tokens):
    """Logits of one sample: each segment is `tokens [mem write]` under a causal mask, logits at the tokens."""
    cell = wrapper.memory_cell
    gpt2 = cell.model.transformer
    states, logits = empty_states(cell.associative), []
    for segment in tokens.split(DECODER_SEGMENT_SIZE):
        n = len(segment) + MEM_TOKENS
        hidden = torch.cat([gpt2.wte(segment), cell.memory]) + gpt2.wpe(torch.arange(n))
        causal = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
        hidden, states = reference_layers(cell.associative, gpt2.h, hidden, states,
                                          write=slice(len(segment), None), mask=causal)
        logits.append(cell.model.lm_head(gpt2.ln_f(hidden))[:len(segment)])
    return torch.cat(logits)


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_encoder_equals_the_reference_in_outputs_and_gradients():
    wrapper = tiny_associative_encoder(False).eval()
    batch = {"input_ids": random_ids((2, 3 * ENCODER_SEGMENT_SIZE), seed=3), "labels": torch.tensor([0, 2])}
    output = wrapper(**batch)
    output.loss.backward()
    got = gradients(wrapper)
    wrapper.zero_grad(set_to_none=True)
    logits = torch.stack([reference_encoder_logits(wrapper, ids) for ids in batch["input_ids"]])
    torch.testing.assert_close(output.logits, logits, rtol=1e-4, atol=1e-5)
    F.cross_entropy(logits, batch["labels"]).backward()
    expected = gradients(wrapper)
    assert got.keys() == expected.keys() and any("associative.layers.0.key" in name for name in got)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-3, atol=1e-6, msg=name)


def test_decoder_equals_the_reference_in_outputs_and_gradients():
    wrapper = tiny_associative_decoder(False).eval()
    ids = random_ids((2, 3 * DECODER_SEGMENT_SIZE), seed=4)
    output = wrapper(input_ids=ids, labels=ids)
    output.loss.backward()
    got = gradients(wrapper)
    wrapper.zero_grad(set_to_none=True)
    logits = torch.stack([reference_decoder_logits(wrapper, sample) for sample in ids])
    torch.testing.assert_close(output.logits, logits, rtol=1e-4, atol=1e-5)
    F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    expected = gradients(wrapper)
    assert got.keys() == expected.keys() and any("associative.layers.1.beta" in name for name in got)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-3, atol=1e-6, msg=name)


def test_dpfp_matches_its_definition():
    x = torch.randn(4, 5)
    torch.testing.assert_close(dpfp(x), reference_dpfp(x))
    assert dpfp(x).shape == (4, 30) and (dpfp(x) >= 0).all()


# ---- the memory itself ----------------------------------------------------------------------------------------

def orthogonal_keys():
    """Two keys whose DPFP features have disjoint supports (so are orthogonal), as (1, 2, 6 * 2) features."""
    keys = dpfp(torch.tensor([[1.0, 2.0], [-1.0, -2.0]]))
    assert keys[0] @ keys[1] == 0 and keys.norm(dim=1).min() > 0
    return keys[None]


def empty(hidden=3, n_features=12):
    return torch.zeros(1, hidden, n_features), torch.zeros(1, n_features)


def test_a_written_value_is_read_back_under_its_key():
    keys, values = orthogonal_keys(), torch.tensor([[[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]]])
    A, z = write_memory(*empty(), keys, values, beta=torch.ones(1, 2))
    torch.testing.assert_close(read_memory(A, z, keys), values, rtol=1e-5, atol=1e-5)


def test_the_delta_rule_replaces_a_value_where_an_additive_memory_mixes():
    key = orthogonal_keys()[:, :1]
    old, new = torch.tensor([[[1.0, 2.0, 3.0]]]), torch.tensor([[[-4.0, 0.0, 1.0]]])
    A, z = write_memory(*empty(), key, old, beta=torch.ones(1, 1))
    A, z = write_memory(A, z, key, new, beta=torch.ones(1, 1))
    torch.testing.assert_close(read_memory(A, z, key), new, rtol=1e-5, atol=1e-5)
    additive_A = torch.einsum("bmh,bmf->bhf", old + new, key)  # A += v phi^T, z += phi, twice
    mixed = read_memory(additive_A, 2 * key[:, 0], key)
    torch.testing.assert_close(mixed, (old + new) / 2, rtol=1e-5, atol=1e-5)


def test_gamma_carries_no_gradient():
    A, z = empty()
    z = torch.rand_like(z)
    keys = torch.rand(1, 2, 12, requires_grad=True)
    _, new_z = write_memory(A, z, keys, torch.zeros(1, 2, 3), beta=torch.ones(1, 2))
    new_z.sum().backward()
    # z' = z + sum_i gamma_i phi_i: with gamma held constant, d sum(z') / d phi_i = gamma_i on every feature
    gamma = (1 - (keys.detach() @ z[0]) / (keys.detach().pow(2).sum(-1) + EPS)).clamp(0, 1)
    assert 0 < gamma.min() and gamma.max() < 1  # not clipped, so a gradient through gamma would show
    torch.testing.assert_close(keys.grad, gamma[..., None].expand_as(keys))


def test_an_untrained_memory_leaves_the_backbone_as_it_was():
    wrapper = RMTEncoderForSequenceClassification(tiny_associative_encoder(False).model, MEM_TOKENS, TinyTokenizer(),
                                                  INPUT_SIZE, 8, memory_type="associative", d_mem=4).eval()
    ids = random_ids((1, 3 * ENCODER_SEGMENT_SIZE), seed=5)
    last = torch.cat([torch.tensor([CLS_ID]), wrapper.mem_token_ids, torch.tensor([SEP_ID]),
                      ids[0, -ENCODER_SEGMENT_SIZE:], torch.tensor([SEP_ID])])[None]
    torch.testing.assert_close(wrapper(input_ids=ids).logits, wrapper.model(input_ids=last).logits)


@pytest.mark.parametrize("build", [tiny_associative_encoder, tiny_associative_decoder])
def test_the_state_does_not_grow_with_the_number_of_segments(build):
    wrapper = build(False).eval()
    shapes = []
    step = wrapper._segment_step

    def recording_step(*args, **kwargs):
        output = step(*args, **kwargs)
        shapes.append([tuple(t.shape) for t in output[1]])
        return output

    wrapper._segment_step = recording_step
    segment = ENCODER_SEGMENT_SIZE if build is tiny_associative_encoder else DECODER_SEGMENT_SIZE
    wrapper(input_ids=random_ids((2, 8 * segment), seed=6))
    assert len(shapes) == 8 and all(s == shapes[0] for s in shapes)
    n_layers, hidden, n_features = 2, 32, 6 * 4
    assert shapes[0] == [(2, hidden, n_features)] * n_layers + [(2, n_features)] * n_layers


def value_gradient(wrapper, batch):
    wrapper.train()(**batch).loss.backward()
    memory = wrapper.associative if hasattr(wrapper, "associative") else wrapper.memory_cell.associative
    grads = [layer.value.weight.grad for layer in memory.layers]
    return sum(0.0 if grad is None else float(grad.abs().sum()) for grad in grads)


@pytest.mark.parametrize("build, full, none, make_batch", [
    (tiny_associative_encoder, {"bptt_depth": -1}, {"bptt_depth": 0}, lambda: encoder_batch([30, 30])),
    (tiny_associative_decoder, {"k2": -1}, {"k2": 1}, lambda: decoder_batch([24, 24])),
])
def test_truncated_bptt_cuts_the_gradient_to_the_writes(build, full, none, make_batch):
    batch = make_batch()
    assert value_gradient(build(False, **full), batch) > 0
    assert value_gradient(build(False, **none), batch) == 0  # the writes only matter through later segments


def test_encoder_batch_of_different_segment_counts_equals_each_sample_alone():
    wrapper = tiny_associative_encoder(False).eval()
    batch = encoder_batch([40, 7, 18])
    together = wrapper(**batch)
    for row in range(3):
        n = int(batch["attention_mask"][row].sum())
        alone = wrapper(input_ids=batch["input_ids"][row:row + 1, :n], labels=batch["labels"][row:row + 1])
        torch.testing.assert_close(together.logits[row:row + 1], alone.logits, rtol=1e-5, atol=1e-6)


def test_decoder_batch_of_different_segment_counts_equals_each_sample_alone():
    wrapper = tiny_associative_decoder(False).eval()
    batch = decoder_batch([32, 5, 12])
    together = wrapper(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    generated = wrapper.generate(batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=3,
                                 do_sample=False, pad_token_id=0)
    for row in range(3):
        n = int(batch["attention_mask"][row].sum())
        ids = batch["input_ids"][row:row + 1, -n:]
        alone = wrapper(input_ids=ids)
        torch.testing.assert_close(together.logits[row:row + 1, -n:], alone.logits, rtol=1e-4, atol=1e-5)
        alone_generated = wrapper.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
        assert torch.equal(generated[row:row + 1], alone_generated)


@pytest.mark.parametrize("build, make_batch", [(tiny_associative_encoder, lambda: encoder_batch([40, 25])),
                                               (tiny_associative_decoder, lambda: decoder_batch([32, 20]))])
def test_bf16_autocast_follows_float32(build, make_batch):
    wrapper, batch = build(False).eval(), make_batch()
    with torch.no_grad():
        full = wrapper(**batch).loss
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = wrapper(**batch).loss
    assert half.dtype == torch.float32 and abs(float(half - full)) < 0.05 * float(full)


# ---- bad input ------------------------------------------------------------------------------------------------

class NoLayers(nn.Module):
    """An embedding and a head, but no list of blocks."""

    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"num_hidden_layers": 2, "max_position_embeddings": 64})()
        self.embed = nn.Embedding(200, 8)

    def get_input_embeddings(self):
        return self.embed

    def resize_token_embeddings(self, n, mean_resizing=False):
        self.embed = nn.Embedding(n, 8)


@pytest.mark.parametrize("options, message", [
    ({"memory_type": "assoc"}, "memory_type='assoc'; expected one of tokens, associative"),
    ({"memory_type": "associative", "d_mem": 0}, "d_mem=0; expected an integer >= 1"),
])
def test_bad_memory_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        RMTEncoderForSequenceClassification(NoLayers(), MEM_TOKENS, TinyTokenizer(), INPUT_SIZE, 4, **options)


def test_associative_memory_needs_memory_tokens():
    with pytest.raises(ValueError, match="num_mem_tokens=0: expected at least one memory token"):
        RMTEncoderForSequenceClassification(NoLayers(), 0, TinyTokenizer(), INPUT_SIZE, 4, memory_type="associative")


def test_a_backbone_without_a_list_of_blocks_is_named():
    with pytest.raises(ValueError, match="backbone NoLayers cannot take an associative memory"):
        RMTEncoderForSequenceClassification(NoLayers(), MEM_TOKENS, TinyTokenizer(), INPUT_SIZE, 4,
                                            memory_type="associative")
