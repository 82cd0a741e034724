"""The options of an ArXiv language-modelling run (`ArxivArgs`), checked once before anything is built."""
from dataclasses import dataclass

from lm_experiments_tools.errors import BadInputError
from lm_experiments_tools.flags import help_field
from rmt_experiments.memory_options import memory_config
from rmt_experiments.run_args import RunArgs


@dataclass
class ArxivArgs(RunArgs):
    """Options of the model, the memory and the data; shared ones come from `RunArgs`, the Trainer's from
    `TrainerArgs`."""

    from_pretrained: str | None = help_field(
        None, "Hub name or folder of a pretrained causal LM and its tokenizer (e.g. gpt2); exclusive with model_cfg")
    model_cfg: str | None = help_field(
        None, "Config (folder or .json file) of a causal LM initialised from scratch; None with no from_pretrained: "
              "a 4-layer, 256-hidden GPT-2")
    backbone_cls: str = help_field("transformers:AutoModelForCausalLM", "Backbone class as module:Class")
    model_cls: str = help_field("modeling_rmt:RecurrentWrapper", "Recurrent wrapper class as module:Class")
    input_size: int = help_field(128, "Tokens per backbone forward: segment tokens + 2 * num_mem_tokens (memory "
                                      "tokens read and write) or + num_mem_tokens (associative memory: write only)")
    num_mem_tokens: int = help_field(0, "Memory tokens; 0 with max_n_segments 1 is the no-memory baseline")
    max_n_segments: int = help_field(
        1, "Blocks per sample: the scored block and up to max_n_segments - 1 blocks of history")
    k2: int = help_field(
        -1, "Truncated BPTT, counted in segments: gradients flow through the last k2 segments, i.e. k2 - 1 "
            "memory transitions (--bptt_depth of run_finetuning_babilong_rmt.py counts those transitions); "
            "-1: all (full BPTT)")
    vary_n_segments: bool = help_field(
        False, "Train each batch on its last n blocks, n uniform in 1..max_n_segments")
    dataset_path: str | None = help_field(
        None, "load_from_disk folder with train and validation (or valid) splits, test optional")
    dataset_name: str | None = help_field(None, "Hub dataset name")
    dataset_config: str | None = help_field(None, "Hub dataset configuration")
    text_column: str = help_field("text", "Column holding document text")
    text_files: list[str] | None = help_field(None, "Plain text training files, one document per file")
    valid_text_files: list[str] | None = help_field(None, "Plain text validation files, one document per file")
    test_text_files: list[str] | None = help_field(None, "Plain text test files, one document per file")
    validate_only: bool = help_field(False, "Evaluate model_cpt on validation and test, no training")
    num_valid_samples: int | None = help_field(
        None, "Evaluate on this many evenly spaced validation (and test) samples; None: all")
    data_n_workers: int = help_field(0, "DataLoader worker processes, also tokenization processes when > 0")

    @property
    def segment_size(self) -> int:
        return memory_config(self, self.memory_layout).segment_size

    @property
    def bptt_segments(self) -> int:
        return self.k2

    def check(self, trainer_args) -> None:
        """Raise BadInputError naming the first ArXiv option that cannot work."""
        segment_size = self.segment_size  # the memory settings are checked already
        if segment_size < 2:  # a block predicts its next tokens
            raise BadInputError(f"segment size input_size - {self.input_size - segment_size} memory positions = "
                                f"{segment_size}: expected >= 2")
        sources = [name for name in ("dataset_path", "dataset_name", "text_files") if getattr(self, name)]
        if len(sources) > 1:
            raise BadInputError(f"several text sources given ({', '.join(sources)}): expected at most one")
