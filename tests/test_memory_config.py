"""The memory configuration (modeling_rmt.memory_config): one check for every field, the segment sizes of both
layouts, the seed's keyword constructors and the configuration building the same models, the BPTT conversion,
and the nested memory configuration of a model folder's config (old flat folders still load)."""
import dataclasses
import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from modeling_rmt import (MemoryCell, MemoryConfig, RecurrentWrapper, RMTDecoderConfig, RMTEncoderConfig,
                          RMTEncoderForSequenceClassification, RMTForCausalLM, RMTForSequenceClassification)
from modeling_rmt.memory_config import bptt_depth_from_segments, bptt_segments_from_depth

VOCAB_SIZE, INPUT_SIZE, MEM_TOKENS = 200, 24, 3


class TinyTokenizer:
    """The parts of a tokenizer the encoder wrapper reads, with BERT-style special ids."""
    cls_token_id, sep_token_id, pad_token_id, bos_token_id, eos_token_id = 101, 102, 0, None, None

    def __len__(self):
        return VOCAB_SIZE


def tiny_bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                    intermediate_size=64, vocab_size=VOCAB_SIZE,
                                                    max_position_embeddings=64, num_labels=3)).eval()


def tiny_gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB_SIZE, n_positions=64)).eval()


def config(**fields):
    return MemoryConfig(**{"layout": "encoder", "num_mem_tokens": MEM_TOKENS, "input_size": INPUT_SIZE,
                           "max_n_segments": 4, **fields})


@pytest.mark.parametrize("fields, message", [
    ({"layout": "middle"}, "layout='middle'; expected one of encoder, decoder"),
    ({"num_mem_tokens": -1}, "num_mem_tokens=-1; expected an integer >= 0"),
    ({"num_mem_tokens": 2.5}, "num_mem_tokens=2.5"),
    ({"input_size": 6}, r"input_size=6 must exceed the 6 layout ids .*segment_size=0"),
    ({"input_size": "24"}, "input_size='24'; expected an integer"),
    ({"input_size": None}, "input_size=None; expected an integer"),
    ({"layout": "decoder", "input_size": 6}, r"input_size=6 must exceed the 6 layout ids .*segment_size=0"),
    ({"max_n_segments": 0}, "max_n_segments=0; expected an integer >= 1"),
    ({"bptt_segments": 0}, r"bptt_segments=0 \(the seed's k2=0\); expected -1"),
    ({"bptt_segments": -2}, "bptt_segments=-2"),
    ({"segment_alignment": "middle"}, "segment_alignment='middle' is not supported"),
    ({"memory_type": "assoc"}, "memory_type='assoc'; expected one of tokens, associative"),
    ({"d_mem": 0}, "d_mem=0; expected an integer >= 1"),
    ({"memory_type": "associative", "num_mem_tokens": 0}, "num_mem_tokens=0: expected at least one memory token"),
])
def test_a_bad_value_is_named(fields, message):
    with pytest.raises(ValueError, match=message):
        config(**fields)


def test_segment_checkpointing_must_be_a_bool():
    with pytest.raises(ValueError, match="segment_checkpointing='yes'; expected True or False"):
        config(segment_checkpointing="yes")


def test_replace_checks_again_and_none_alignment_is_right():
    assert config(segment_alignment=None).segment_alignment == "right"
    with pytest.raises(ValueError, match="max_n_segments=0"):
        dataclasses.replace(config(), max_n_segments=0)


@pytest.mark.parametrize("layout, memory_type, num_mem_tokens, segment_size", [
    ("encoder", "tokens", 10, 512 - 10 - 3),  # the paper's 499
    ("encoder", "tokens", 0, 512 - 2),  # the backbone's own [CLS] tokens [SEP]
    ("encoder", "associative", 10, 512 - 10 - 3),
    ("decoder", "tokens", 10, 512 - 2 * 10),
    ("decoder", "tokens", 0, 512),
    ("decoder", "associative", 10, 512 - 10),
])
def test_segment_sizes(layout, memory_type, num_mem_tokens, segment_size):
    memory = MemoryConfig(layout=layout, num_mem_tokens=num_mem_tokens, input_size=512, memory_type=memory_type)
    assert memory.segment_size == segment_size
    if layout == "decoder":
        assert MemoryConfig.from_segment_size(segment_size, num_mem_tokens=num_mem_tokens,
                                              memory_type=memory_type) == memory


@pytest.mark.parametrize("bptt_depth, bptt_segments", [(-1, -1), (0, 1), (3, 4)])
def test_bptt_conversion_round_trip(bptt_depth, bptt_segments):
    assert bptt_segments_from_depth(bptt_depth) == bptt_segments
    assert bptt_depth_from_segments(bptt_segments) == bptt_depth
    assert config(bptt_segments=bptt_segments).bptt_depth == bptt_depth


def test_a_bad_bptt_depth_is_named():
    with pytest.raises(ValueError, match="bptt_depth=-2; expected -1"):
        bptt_segments_from_depth(-2)


@pytest.mark.parametrize("memory_type", ["tokens", "associative"])
def test_encoder_keywords_and_config_build_the_same_model(memory_type):
    options = {"memory_type": memory_type, "d_mem": 4, "segment_alignment": "center"}
    by_keywords = RMTEncoderForSequenceClassification(tiny_bert(), MEM_TOKENS, TinyTokenizer(), INPUT_SIZE, 4,
                                                      bptt_depth=1, **options)
    memory = config(bptt_segments=2, **options)
    by_config = RMTEncoderForSequenceClassification(tiny_bert(), tokenizer=TinyTokenizer(), memory_config=memory)
    assert by_keywords.memory_config == memory and by_config.memory_config is memory
    assert (by_keywords.segment_size, by_keywords.bptt_depth) == (by_config.segment_size, 1)
    by_config.load_state_dict(by_keywords.state_dict())
    ids = torch.randint(110, VOCAB_SIZE, (2, 3 * by_config.segment_size))
    with torch.no_grad():
        assert torch.equal(by_keywords(ids).logits, by_config(ids).logits)


@pytest.mark.parametrize("memory_type", ["tokens", "associative"])
def test_decoder_keywords_and_config_build_the_same_model(memory_type):
    cell = MemoryCell(tiny_gpt2(), MEM_TOKENS, memory_type=memory_type, d_mem=4)
    segment_size = 10
    by_keywords = RecurrentWrapper(cell, segment_size, 4, k2=2, segment_alignment="left")
    memory = MemoryConfig.from_segment_size(segment_size, num_mem_tokens=MEM_TOKENS, memory_type=memory_type,
                                            d_mem=4, max_n_segments=4, bptt_segments=2, segment_alignment="left")
    by_config = RecurrentWrapper(MemoryCell(tiny_gpt2(), memory_config=memory))
    assert by_keywords.memory_config == memory and by_config.memory_config is memory
    assert (by_keywords.segment_size, by_keywords.k2, by_config.k2) == (segment_size, 2, 2)
    by_config.load_state_dict(by_keywords.state_dict())
    ids = torch.randint(VOCAB_SIZE, (2, 3 * segment_size))
    with torch.no_grad():
        assert torch.equal(by_keywords(ids, labels=ids).logits, by_config(ids, labels=ids).logits)


def test_raising_max_n_segments_replaces_the_checked_config():
    wrapper = RMTEncoderForSequenceClassification(tiny_bert(), tokenizer=TinyTokenizer(), memory_config=config())
    wrapper.max_n_segments = 7
    assert wrapper.memory_config.max_n_segments == 7
    with pytest.raises(ValueError, match="max_n_segments=0"):
        wrapper.max_n_segments = 0


@pytest.mark.parametrize("make, message", [
    (lambda: RMTEncoderForSequenceClassification(tiny_bert(), 2, TinyTokenizer(), memory_config=config()),
     "num_mem_tokens given with memory_config"),
    (lambda: RMTEncoderForSequenceClassification(tiny_bert(), tokenizer=TinyTokenizer(),
                                                 memory_config=config(layout="decoder")),
     "memory_config.layout='decoder'; expected 'encoder'"),
    (lambda: RMTEncoderForSequenceClassification(tiny_bert(), tokenizer=TinyTokenizer(), memory_config={}),
     "memory_config={}; expected a MemoryConfig"),
    (lambda: RecurrentWrapper(MemoryCell(tiny_gpt2(), 2)), "memory_config.input_size=None"),
    (lambda: RecurrentWrapper(MemoryCell(tiny_gpt2(), 2), memory_config=config(layout="decoder")),
     "memory_config.num_mem_tokens=3 but the memory cell has num_mem_tokens=2"),
    (lambda: RecurrentWrapper(MemoryCell(tiny_gpt2(), 2), 10, 4, memory_config=config(layout="decoder")),
     "max_n_segments, segment_size given with memory_config"),
])
def test_a_wrapper_takes_the_config_or_the_keywords(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_hf_config_holds_the_memory_config_nested(tmp_path):
    memory = config(layout="decoder", memory_type="associative", d_mem=4, bptt_segments=3)
    saved = RMTDecoderConfig(backbone_model_config=GPT2Config(n_embd=32, n_layer=2, n_head=2).to_dict(),
                             memory_config=memory)
    saved.save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    assert values["memory_config"] == memory.to_dict() and MemoryConfig.from_dict(values["memory_config"]) == memory
    loaded = RMTDecoderConfig.from_pretrained(tmp_path)
    assert loaded.memory_config == memory and (loaded.num_mem_tokens, loaded.d_mem) == (MEM_TOKENS, 4)


def old_format_folder(folder, model_type, backbone, **memory_values):
    """A config.json as the code before the nested memory config wrote it: the memory values top-level."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": model_type, "backbone_model_config": backbone.to_dict(), "task": "qa1", "task_labels": None,
        "architectures": [], **memory_values}))
    return folder


@pytest.mark.parametrize("memory_type", ["tokens", "associative"])
def test_a_folder_saved_in_the_old_format_loads(tmp_path, memory_type):
    flat = {"num_mem_tokens": 2, "memory_type": memory_type, "d_mem": 4, "input_size": 16, "max_n_segments": 3,
            "segment_alignment": "left", "bptt_segments": 2}
    backbone = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          vocab_size=VOCAB_SIZE, max_position_embeddings=64, num_labels=3)
    encoder = RMTEncoderConfig.from_pretrained(old_format_folder(
        tmp_path / "encoder", "rmt_encoder", backbone, sum_loss=True,
        layout_token_ids={"cls_token_id": 101, "sep_token_id": 102, "pad_token_id": 0}, **flat))
    assert encoder.memory_config == MemoryConfig(layout="encoder", **flat) and encoder.sum_loss
    model = RMTForSequenceClassification(encoder)
    assert (model.segment_size, model.rmt.bptt_depth, model.rmt.alignment) == (16 - 2 - 3, 1, "left")
    decoder = RMTDecoderConfig.from_pretrained(old_format_folder(
        tmp_path / "decoder", "rmt_decoder", GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB_SIZE), **flat))
    assert decoder.memory_config == MemoryConfig(layout="decoder", **flat)
    lm = RMTForCausalLM(decoder)
    assert (lm.segment_size, lm.rmt.k2) == (16 - (2 if memory_type == "associative" else 4), 2)


def test_flat_values_that_disagree_with_the_nested_config_are_refused():
    with pytest.raises(ValueError, match="config has num_mem_tokens=5 beside memory_config.num_mem_tokens=3"):
        RMTDecoderConfig(memory_config=config(layout="decoder").to_dict(), num_mem_tokens=5)
