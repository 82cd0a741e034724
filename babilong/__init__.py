"""BABILong data: task facts hidden in long background text, with an exact token length.

See docs/design.md, "BABILong data" and "Background text and the offline default".
"""
from .background import BackgroundCorpus, background_sentences, load_background, split_sentences, tokenize_sentences
from .dataset import (BABILongDataset, BuiltSample, build_sample, decoder_collate, encoder_collate,
                      pad_sequences, place_facts)
from .tasks import (PLACEMENTS, PLACES, TASK_NAMES, BabiTask, GeneratedTask, Task, TaskSample, get_task,
                    parse_babi_file)

__all__ = [
    "BABILongDataset", "BackgroundCorpus", "BabiTask", "BuiltSample", "GeneratedTask", "PLACEMENTS", "PLACES",
    "TASK_NAMES", "Task", "TaskSample", "background_sentences", "build_sample", "decoder_collate",
    "encoder_collate", "get_task", "load_background", "pad_sequences",
    "parse_babi_file", "place_facts", "split_sentences", "tokenize_sentences",
]
