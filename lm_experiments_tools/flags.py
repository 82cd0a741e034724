"""Command-line options as dataclass fields with help text, and values beyond what argparse parses
(comma-separated lists of positive integers)."""
from dataclasses import field

from .errors import BadInputError


def help_field(default, text: str):
    """A dataclass field with help text; HfArgumentParser appends the default itself, so the text must not."""
    return field(default=default, metadata={"help": text})


def parse_positive_ints(text: str, flag: str) -> list:
    """The comma-separated positive integers of a list flag such as --curriculum 1,2,4.

    Raises:
        BadInputError naming the flag and its value when an item is empty, not an integer or below 1.
    """
    try:
        values = [int(item) for item in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise BadInputError(f"--{flag} {text!r}: expected comma-separated positive integers, e.g. 1,2,4")
    return values
