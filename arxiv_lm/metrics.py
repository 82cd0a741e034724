"""Loss and perplexity per segment position for language modelling with recurrent memory.

See docs/design.md, "ArXiv language modelling".

Position p of a sample is its p-th real block (0 = the first block, read with the initial memory; p = how
many segments of memory it was read after). Each block scores its `segment_size - 1` in-block next-token
predictions, the same tokens `data.SegmentCollator` puts into the loss for the last block. Sums of
negative log-likelihood and token counts are kept per sample so that the dataset-level numbers are exact
token-weighted means, whatever the batch size or number of processes.
"""
import math

import torch
import torch.nn.functional as F


def block_nll(logits, input_ids, attention_mask, segment_size, max_n_segments):
    """Summed negative log-likelihood and token count per sample and segment position.

    Args:
        logits: (B, T, V) with T = n_blocks * segment_size; samples left-padded with whole blocks.
        input_ids: (B, T) token ids (the targets, shifted by one inside each block).
        attention_mask: (B, T), 1 on real tokens.
        segment_size: tokens per block.
        max_n_segments: width of the position axis of the result (>= n_blocks).

    Returns:
        dict of float tensors on the CPU: `position_nll` and `position_count` (B, max_n_segments), indexed by
        position from the sample's first real block; `last_nll` and `last_count` (B,) for the last block.
    """
    logits = logits.detach()  # metrics only: no autograd graph when called on training outputs
    n_tokens = logits.shape[1]
    n_blocks = n_tokens // segment_size
    nll, count = [], []
    for block in range(n_blocks):  # one block at a time: the float32 copy of the logits stays (B, S, V)
        start = block * segment_size
        block_logits = logits[:, start:start + segment_size - 1].float()  # (B, S-1, V)
        targets = input_ids[:, start + 1:start + segment_size]  # (B, S-1)
        real = attention_mask[:, start + 1:start + segment_size].bool()  # (B, S-1)
        token_nll = F.cross_entropy(block_logits.transpose(1, 2), targets, reduction="none")  # (B, S-1)
        nll.append((token_nll * real).sum(1))
        count.append(real.sum(1))
    nll, count = torch.stack(nll, 1).cpu(), torch.stack(count, 1).cpu().float()  # (B, n_blocks)

    # padding is whole blocks on the left, so a sample's real blocks are its last n_real ones
    n_real = (count > 0).sum(1, keepdim=True)  # (B, 1)
    positions = torch.arange(max_n_segments).unsqueeze(0)  # (1, N)
    source = (n_blocks - n_real + positions).clamp(0, n_blocks - 1)  # (B, N) block index of each position
    present = positions < n_real  # (B, N)
    return {"position_nll": nll.gather(1, source) * present, "position_count": count.gather(1, source) * present,
            "last_nll": nll[:, -1], "last_count": count[:, -1]}


def _loss_and_ppl(nll, count, prefix):
    loss = nll / count
    return {f"{prefix}loss": loss, f"{prefix}ppl": math.exp(loss)}


def segment_metrics(kept):
    """Dataset-level loss and perplexity from the sums of `block_nll`, gathered over all batches.

    Args:
        kept: dict with `position_nll`, `position_count` (n_samples, N), `last_nll`, `last_count` (n_samples,).

    Returns:
        dict with `last_block_loss/ppl` (the trained objective: the last block of every sample),
        `all_blocks_loss/ppl` (every block of every sample) and `seg{p}_loss/ppl` per position p with tokens.
    """
    position_nll = torch.as_tensor(kept["position_nll"]).sum(0).tolist()
    position_count = torch.as_tensor(kept["position_count"]).sum(0).tolist()
    metrics = {**_loss_and_ppl(float(torch.as_tensor(kept["last_nll"]).sum()),
                               float(torch.as_tensor(kept["last_count"]).sum()), "last_block_"),
               **_loss_and_ppl(sum(position_nll), sum(position_count), "all_blocks_")}
    for position, (nll, count) in enumerate(zip(position_nll, position_count)):
        if count > 0:
            metrics.update(_loss_and_ppl(nll, count, f"seg{position}_"))
    return metrics
