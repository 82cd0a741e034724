"""Print BABILong samples as the model sees them, one JSON object a line.

    python -m babilong.show --task memorize --input_seq_len 998 --n 2

Each line has `text` (the decoded task tokens), `n_tokens`, `facts`, `fact_token_positions`, `question` and
`answer`. Bad input exits with code 2 and a one-line message.
"""
import argparse
import json
import sys

from rmt_experiments.offline_model import load_tokenizer

from .dataset import BABILongDataset
from .tasks import PLACEMENTS, SPLITS, TASK_NAMES


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m babilong.show", description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, help=f"one of: {', '.join(TASK_NAMES)}")
    parser.add_argument("--input_seq_len", type=int, required=True, help="task tokens per sample")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer name or path (default: the offline MiniLM tokenizer)")
    parser.add_argument("--babi_path", default=None, help="folder with the bAbI files (qa1..qa20 tasks)")
    parser.add_argument("--max_n_facts", type=int, default=None, help="drop bAbI samples with more facts")
    parser.add_argument("--noise_dataset", default="default",
                        help="background source (default: 'default', the offline stdlib text)")
    parser.add_argument("--placement", default=None, choices=PLACEMENTS,
                        help="where the facts go (default: the task's own)")
    parser.add_argument("--split", default="train", choices=SPLITS, help="train or valid (default: train)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument("--n", type=int, default=1, help="number of samples to print (default: 1)")
    return parser.parse_args(argv)


def _load_tokenizer(name_or_path):
    try:
        return load_tokenizer(name_or_path)
    except (OSError, ValueError) as error:
        raise ValueError(f"tokenizer {name_or_path!r} could not be loaded: {error}") from error


def sample_record(dataset: BABILongDataset, index: int) -> dict:
    """What `show` prints for sample `index` of `dataset`."""
    sample = dataset.build(index)
    return {"text": dataset.tokenizer.decode(sample.input_ids), "n_tokens": len(sample.input_ids),
            "facts": list(sample.task_sample.facts), "fact_token_positions": sample.fact_positions,
            "question": sample.task_sample.question, "answer": sample.task_sample.answer}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.n < 1:
            raise ValueError(f"--n must be a positive integer, got {args.n}")
        dataset = BABILongDataset(args.task, args.noise_dataset, _load_tokenizer(args.tokenizer),
                                  args.input_seq_len, split=args.split, seed=args.seed, placement=args.placement,
                                  babi_path=args.babi_path, max_n_facts=args.max_n_facts)
        for index in range(min(args.n, len(dataset))):
            print(json.dumps(sample_record(dataset, index), ensure_ascii=False))
    except ValueError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)  # one line, whatever the cause
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
