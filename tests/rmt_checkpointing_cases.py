"""Tiny encoder and decoder RMT cases run with and without segment checkpointing, for the equality tests.

Also a torchrun worker: `torchrun --nproc_per_node 2 tests/rmt_checkpointing_cases.py OUT_DIR` runs every case
under DistributedDataParallel (gloo), each process on its own half of the batch, and writes per rank the largest
relative gradient difference between checkpointing and full BPTT and a hash of the synchronised gradients.
"""
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from modeling_rmt import MemoryCell, RecurrentWrapper, RMTEncoderForSequenceClassification

VOCAB_SIZE = 200
MEM_TOKENS = 3
INPUT_SIZE = 16  # encoder segment_size = 16 - 3 - 3 = 10
DECODER_SEGMENT_SIZE = 8
PAD_ID, CLS_ID, SEP_ID = 0, 101, 102
DROPOUT = 0.1
FORWARD_SEED = 7


class TinyTokenizer:
    """The parts of a Hugging Face tokenizer the encoder wrapper reads, with BERT-style special ids."""

    cls_token_id, sep_token_id, pad_token_id, bos_token_id, eos_token_id = CLS_ID, SEP_ID, PAD_ID, None, None

    def __len__(self):
        return VOCAB_SIZE


def tiny_encoder(segment_checkpointing, max_n_segments=8, **kwargs):
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=VOCAB_SIZE, max_position_embeddings=64, num_labels=3,
                        hidden_dropout_prob=DROPOUT, attention_probs_dropout_prob=DROPOUT)
    return RMTEncoderForSequenceClassification(BertForSequenceClassification(config), MEM_TOKENS, TinyTokenizer(),
                                               INPUT_SIZE, max_n_segments, segment_checkpointing=segment_checkpointing,
                                               **kwargs)


def tiny_decoder(segment_checkpointing, max_n_segments=8, memory_type="tokens", d_mem=4, **kwargs):
    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB_SIZE, n_positions=64, resid_pdrop=DROPOUT,
                        embd_pdrop=DROPOUT, attn_pdrop=DROPOUT, pad_token_id=PAD_ID)
    cell = MemoryCell(GPT2LMHeadModel(config), MEM_TOKENS, memory_type=memory_type, d_mem=d_mem)
    return RecurrentWrapper(cell, DECODER_SEGMENT_SIZE, max_n_segments, segment_checkpointing=segment_checkpointing,
                            **kwargs)


def with_random_values(wrapper, std=0.5):
    """`wrapper` with its associative memory's W_V drawn at random (it starts at 0, which would leave W_K, W_Q and
    W_beta without gradient and the memory empty)."""
    memory = wrapper.associative if hasattr(wrapper, "associative") else wrapper.memory_cell.associative
    torch.manual_seed(1)
    for layer in memory.layers:
        torch.nn.init.normal_(layer.value.weight, std=std)
    return wrapper


def tiny_associative_encoder(segment_checkpointing, **kwargs):
    return with_random_values(tiny_encoder(segment_checkpointing, memory_type="associative", d_mem=4, **kwargs))


def tiny_associative_decoder(segment_checkpointing, **kwargs):
    return with_random_values(tiny_decoder(segment_checkpointing, memory_type="associative", d_mem=4, **kwargs))


def random_ids(shape, seed):
    return torch.randint(110, VOCAB_SIZE, shape, generator=torch.Generator().manual_seed(seed))


def padded_batch(lengths, seed, left):
    """(B, max length) ids padded with PAD_ID (left or right) and the mask of real tokens."""
    ids = random_ids((len(lengths), max(lengths)), seed)
    positions = torch.arange(max(lengths))
    lengths = torch.tensor(lengths)[:, None]
    real = positions >= max(lengths) - lengths if left else positions < lengths
    return ids.masked_fill(~real, PAD_ID), real.long()


def encoder_batch(lengths, seed=1):
    """Right-padded encoder inputs: samples of `lengths` tokens (10 per segment) and their labels."""
    input_ids, attention_mask = padded_batch(lengths, seed, left=False)
    labels = torch.arange(len(lengths)) % 3
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def decoder_batch(lengths, seed=1, answer_tokens=None):
    """Left-padded decoder inputs (8 tokens per segment) with labels; `answer_tokens`: count only the last ones."""
    input_ids, attention_mask = padded_batch(lengths, seed, left=True)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask,
             "labels": input_ids.masked_fill(attention_mask == 0, -100)}
    if answer_tokens is not None:
        labels_mask = torch.zeros_like(attention_mask, dtype=torch.bool)
        labels_mask[:, -answer_tokens:] = True
        batch["labels_mask"] = labels_mask
    return batch


# name: (model builder, wrapper options, batch); samples have different segment counts where padded
CASES = {
    "encoder_dropout": (tiny_encoder, {}, lambda: encoder_batch([40, 40])),
    "encoder_bptt_depth_1": (tiny_encoder, {"bptt_depth": 1}, lambda: encoder_batch([40, 35])),
    "encoder_sum_loss": (tiny_encoder, {"sum_loss": True}, lambda: encoder_batch([30, 30])),
    "encoder_padded": (tiny_encoder, {"sum_loss": True}, lambda: encoder_batch([40, 7, 18, 31])),
    "decoder_dropout": (tiny_decoder, {}, lambda: decoder_batch([32, 32])),
    "decoder_k2_2": (tiny_decoder, {"k2": 2}, lambda: decoder_batch([32, 30])),
    "decoder_labels_mask": (tiny_decoder, {}, lambda: decoder_batch([32, 32], answer_tokens=3)),
    "decoder_padded": (tiny_decoder, {}, lambda: decoder_batch([32, 5, 12, 25])),
    "encoder_associative_padded": (tiny_associative_encoder, {"sum_loss": True}, lambda: encoder_batch([40, 7, 18])),
    "encoder_associative_bptt_depth_1": (tiny_associative_encoder, {"bptt_depth": 1}, lambda: encoder_batch([40, 35])),
    "decoder_associative_padded": (tiny_associative_decoder, {}, lambda: decoder_batch([32, 5, 12])),
    "decoder_associative_k2_2": (tiny_associative_decoder, {"k2": 2}, lambda: decoder_batch([32, 30])),
}


def loss_and_gradients(model, batch, autocast_dtype=None):
    """Loss and {parameter name: gradient} of one training step of `model` (train mode, fixed dropout seed)."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(FORWARD_SEED)
    with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = model(**batch)["loss"]
    loss.backward()
    module = model.module if isinstance(model, DistributedDataParallel) else model
    return loss.detach(), {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def largest_relative_difference(expected, actual):
    """max |a - e| / (max |e| + tiny) over all tensors of two same-keyed dicts; inf if the keys differ."""
    if expected.keys() != actual.keys():
        return float("inf")
    return max(float((actual[k] - expected[k]).abs().max() / (expected[k].abs().max() + 1e-12)) for k in expected)


def run_distributed_case(name, rank, world_size):
    """Per-rank result of one case under DDP: gradient difference to full BPTT and the synchronised gradients."""
    build, options, make_batch = CASES[name]
    batch = {key: value.chunk(world_size)[rank] for key, value in make_batch().items()}
    results = {}
    for checkpointing in (False, True):
        # as the run scripts set it for the associative memory; DDP then rebuilds the output from its entries
        model = DistributedDataParallel(build(checkpointing, **options),
                                        find_unused_parameters="associative" in name or "padded" in name)
        results[checkpointing] = loss_and_gradients(model, batch)
    flat = torch.cat([grad.flatten() for grad in results[True][1].values()])
    gathered = [torch.empty_like(flat) for _ in range(world_size)]
    dist.all_gather(gathered, flat)
    return {"relative_difference": largest_relative_difference(results[False][1], results[True][1]),
            "loss_difference": float((results[True][0] - results[False][0]).abs()),
            "ranks_agree": all(torch.equal(flat, other) for other in gathered)}


def main():
    out_dir = sys.argv[1]
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    results = {name: run_distributed_case(name, rank, world_size) for name in CASES}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as file:
        json.dump(results, file)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
