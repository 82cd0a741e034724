"""Answer a question about a text of any length with a model folder (`python -m babilong.export`).

    python -m babilong.answer DIR --context story.txt --question "Where is Mary?"

The context and the question are tokenized as evaluation samples are (`babilong.evaluate_official.prompt_ids`;
a decoder also gets the GEN marker) and read one segment at a time without gradients, so the model's memory stays
flat in the length of the text (the tokenizer's, while it tokenizes the whole text, does not: about 0.7 KiB per
token; `benchmarks/answer_memory.py`); a progress bar counts the segments. An encoder prints the label of its highest logit and that
label's probability, a decoder the answer it generates greedily; then the tokens read and tokens per second.
Bad input (a folder that is not a model folder, a context file that is not UTF-8 text) stops with one line and
exit code 2.
"""
import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lm_experiments_tools.errors import BadInputError
from lm_experiments_tools.runs import exit_on_bad_input
from rmt_experiments.offline_model import eos_token_id

from .dataset import GEN_TEXT
from .model_folder import check_model_folder, load_model_folder

DEFAULT_MAX_NEW_TOKENS = 16  # a decoder whose config has no answer labels to size its answers by


@dataclass
class Answer:
    """What the model answered, with the label's probability (encoder; None for a decoder) and the reading speed."""

    text: str
    probability: float | None
    n_tokens: int
    n_segments: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / max(self.seconds, 1e-9)


def read_context(path) -> str:
    """The text of a UTF-8 file; BadInputError for a missing file or one that is not text."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"--context {str(path)!r} not found: expected a text file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadInputError(f"--context {str(path)!r} is not UTF-8 text ({error.reason} at byte {error.start}): "
                            "expected a text file") from error
    if "\x00" in text:
        raise BadInputError(f"--context {str(path)!r} holds NUL bytes: expected a text file, not binary data")
    return text


def prompt(tokenizer, context: str, question: str, model_type: str) -> torch.Tensor:
    """(1, T) ids of context + question (+ GEN for a decoder), tokenized piece by piece as in evaluation."""
    from .evaluate_official import prompt_ids  # the evaluation's own tokenization of a sample
    pieces = (context, question) if model_type == "encoder" else (context, question, GEN_TEXT)
    return prompt_ids(tokenizer, *pieces)[None]


def answer_encoder(model, input_ids, labels, show_progress: bool) -> tuple:
    """(label, probability) of the highest logit; segments read one at a time with a progress bar."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, show_progress=show_progress)["logits"][0]  # (C,)
    probabilities = logits.float().softmax(dim=-1)
    best = int(probabilities.argmax())
    return labels[best], float(probabilities[best])


def answer_decoder(model, tokenizer, input_ids, max_new_tokens: int, show_progress: bool) -> str:
    """The greedy answer after the prompt; a progress bar counts the segments read into memory."""
    n_segments = math.ceil(input_ids.shape[1] / model.segment_size)
    bar = tqdm(total=n_segments, desc="segments", disable=not show_progress)

    def count_segment(*_):  # returns None: a forward hook's return value would replace the cell's output
        bar.update(1)

    # the wrapper's loop calls the memory cell once per segment before the last, which generates
    hook = model.rmt.memory_cell.register_forward_hook(count_segment)
    try:
        with torch.no_grad():
            generated = model.generate(input_ids, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id(tokenizer),
                                       pad_token_id=tokenizer.pad_token_id, do_sample=False)
    finally:
        hook.remove()
    bar.update(n_segments - bar.n)
    bar.close()
    return tokenizer.decode(generated[0], skip_special_tokens=True).strip()


def answer(folder, context: str, question: str, show_progress: bool = True, max_new_tokens: int | None = None,
           loaded=None) -> Answer:
    """Answer `question` about `context` with the model folder (or `loaded`, its `load_model_folder` tuple)."""
    model_type, tokenizer, model, labels = loaded or load_model_folder(folder)
    input_ids = prompt(tokenizer, context, question, model_type)
    model.max_n_segments = max(1, math.ceil(input_ids.shape[1] / model.segment_size))
    started = time.perf_counter()
    if model_type == "encoder":
        text, probability = answer_encoder(model, input_ids, labels, show_progress)
    else:
        if max_new_tokens is None:
            max_new_tokens = DEFAULT_MAX_NEW_TOKENS if not labels else max(
                len(tokenizer.encode(label, add_special_tokens=False)) for label in labels) + 1
        text, probability = answer_decoder(model, tokenizer, input_ids, max_new_tokens, show_progress), None
    return Answer(text, probability, input_ids.shape[1], model.max_n_segments, time.perf_counter() - started)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="model folder written by python -m babilong.export")
    parser.add_argument("--context", required=True, help="UTF-8 text file: the background with the facts")
    parser.add_argument("--question", required=True, help='the question, e.g. "Where is Mary?"')
    parser.add_argument("--max_new_tokens", type=int, default=None,
                        help="decoder: tokens to generate (default: the longest answer label + 1)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar (default: shown)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    with exit_on_bad_input():  # one line, exit code 2
        check_model_folder(args.model_dir)  # before the context is read or anything is loaded
        context = read_context(args.context)
        if not args.question.strip():
            raise BadInputError("--question is empty: expected a question such as 'Where is Mary?'")
        if args.max_new_tokens is not None and args.max_new_tokens < 1:
            raise BadInputError(f"--max_new_tokens {args.max_new_tokens}: expected a positive integer")
        result = answer(args.model_dir, context, args.question, not args.no_progress, args.max_new_tokens)
    probability = "" if result.probability is None else f" (probability {result.probability:.4f})"
    print(f"answer: {result.text}{probability}")
    print(f"read {result.n_tokens:,} tokens in {result.n_segments} segments in {result.seconds:.2f} s: "
          f"{result.tokens_per_second:,.0f} tokens/s")


if __name__ == "__main__":
    main()
