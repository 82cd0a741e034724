"""The memory wrappers as Hugging Face models: a config that holds the memory and the backbone's config, and
`PreTrainedModel` classes that rebuild backbone and wrapper from it (docs/design.md, "Model folders").

    model = RMTForSequenceClassification.from_wrapper(wrapper, tokenizer, task_labels=labels)
    model.save_pretrained("out")  # config.json, model.safetensors, the tokenizer
    model = AutoModelForSequenceClassification.from_pretrained("out")  # no trust_remote_code, no network

Two model types, one per wrapper: `rmt_encoder` (`RMTEncoderConfig`, `RMTForSequenceClassification` around
`RMTEncoderForSequenceClassification`) and `rmt_decoder` (`RMTDecoderConfig`, `RMTForCausalLM` around `MemoryCell`
+ `RecurrentWrapper`). The backbone's class comes from its config's `model_type` through transformers' own Auto
mappings (`AutoModelForSequenceClassification` / `AutoModelForCausalLM.from_config`), never from a class name
in the folder; a backbone config with `auto_map` (remote code) or another RMT type inside is refused.

Registration with the Auto classes is one explicit call, `register_auto_classes()`, made by `modeling_rmt`'s
`__init__` on import: importing the project is what makes its model types known, as importing transformers makes
its own known, and no folder can trigger it.
"""
import copy
import dataclasses
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                          PreTrainedConfig, PreTrainedModel)
from transformers.configuration_utils import SubConfigSpec

from modeling_rmt.decoder import MemoryCell, RecurrentWrapper
from modeling_rmt.encoder import RMTEncoderForSequenceClassification, special_token_ids
from modeling_rmt.memory_config import FULL_BPTT, MemoryConfig

ENCODER_MODEL_TYPE = "rmt_encoder"
DECODER_MODEL_TYPE = "rmt_decoder"
MODEL_TYPES = (ENCODER_MODEL_TYPE, DECODER_MODEL_TYPE)
# the memory configuration as configs before the nested `memory_config` held it, top-level, with their defaults;
# read from folders saved before it
FLAT_MEMORY_DEFAULTS = {"num_mem_tokens": 10, "memory_type": "tokens", "d_mem": 64, "input_size": 512,
                        "max_n_segments": 1, "segment_alignment": "right", "bptt_segments": FULL_BPTT}
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


class RMTConfig(PreTrainedConfig):
    """What both wrappers need besides weights: the memory configuration, the task's answer labels, and the
    backbone's own config (`backbone_model_config`).

    Fields:
        backbone_model_config: the backbone's config (a dict with `model_type` in config.json); the name avoids
            `backbone_config`, which transformers reserves for vision backbones.
        memory_config: the wrapper's MemoryConfig (a nested dict in config.json; docs/design.md, "The memory
            configuration"). Folders saved before it hold its values top-level (`FLAT_MEMORY_DEFAULTS`): they load
            too. Its values read as attributes of the config as well (`config.num_mem_tokens`, ...).
        task: the task the model was trained on (None: unknown); task_labels: its answers, in class order.
    """

    sub_configs_defaults = {"backbone_model_config": SubConfigSpec(config_class=AutoConfig, model_type="bert")}
    memory_layout = "encoder"

    backbone_model_config: PreTrainedConfig | dict | None = None
    memory_config: MemoryConfig | dict | None = None
    task: str | None = None
    task_labels: list | None = None

    def __post_init__(self, **kwargs):
        flat = {name: kwargs.pop(name) for name in FLAT_MEMORY_DEFAULTS if name in kwargs}
        super().__post_init__(**kwargs)
        check_backbone_config(self.backbone_model_config)
        self.memory_config = nested_memory_config(self.memory_config, flat, self.memory_layout)

    def __getattr__(self, name):
        # the memory configuration's values as attributes, as configs before the nested dict had them
        if name in FLAT_MEMORY_DEFAULTS and isinstance(self.__dict__.get("memory_config"), MemoryConfig):
            return getattr(self.__dict__["memory_config"], name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def to_dict(self):
        """The config as a JSON-ready dict, `memory_config` nested (its one place in config.json)."""
        values = super().to_dict()
        if isinstance(self.memory_config, MemoryConfig):
            values["memory_config"] = self.memory_config.to_dict()
        return values


def nested_memory_config(memory_config, flat: dict, layout: str) -> MemoryConfig:
    """The MemoryConfig of an RMT config: from `memory_config` (a MemoryConfig or its dict), else from the flat
    values of a folder saved before the nested dict (defaults for the missing ones). Flat values beside a nested
    dict (folders saved while both were written) must agree with it."""
    if memory_config is None:
        return MemoryConfig(layout=layout, **{**FLAT_MEMORY_DEFAULTS, **flat})
    if isinstance(memory_config, dict):
        memory_config = MemoryConfig.from_dict(memory_config)
    for name, value in flat.items():
        if getattr(memory_config, name) != value:
            raise ValueError(f"config has {name}={value!r} beside memory_config.{name}="
                             f"{getattr(memory_config, name)!r}; expected the same value (or only memory_config)")
    return memory_config


class RMTEncoderConfig(RMTConfig):
    """`RMTConfig` of the encoder classifier; also `sum_loss` and the tokenizer's special ids the segment layout
    uses (`layout_token_ids`: cls, sep, pad, bos, eos token ids, None where the tokenizer has none)."""

    model_type = ENCODER_MODEL_TYPE
    sum_loss: bool = False
    layout_token_ids: dict | None = None


class RMTDecoderConfig(RMTConfig):
    """`RMTConfig` of the decoder language model."""

    model_type = DECODER_MODEL_TYPE
    memory_layout = "decoder"


def check_backbone_config(config) -> None:
    """Refuse a backbone config that would run code from elsewhere (auto_map) or nest an RMT model."""
    if getattr(config, "auto_map", None):
        raise ValueError(f"backbone_model_config has auto_map={config.auto_map!r}: expected a backbone of a "
                         "transformers model type, without remote code")
    if config.model_type in MODEL_TYPES:
        raise ValueError(f"backbone_model_config has model_type={config.model_type!r}: expected a transformers "
                         "backbone, not an RMT model")


class SavedTokenIds:
    """What the encoder wrapper reads of a tokenizer, from the config: the special token ids and the size of the
    vocabulary before the memory tokens (their ids follow it)."""

    def __init__(self, token_ids: dict, vocab_size: int):
        for name, value in token_ids.items():
            setattr(self, name, value)
        self.vocab_size = vocab_size

    def __len__(self):
        return self.vocab_size


class RMTPreTrainedModel(PreTrainedModel):
    """What both RMT models share: the wrapper in `self.rmt`, the tokenizer saved and loaded with the weights, and
    the attributes evaluation code sets on a wrapper (`max_n_segments`, `segment_size`)."""

    base_model_prefix = "rmt"
    main_input_name = "input_ids"

    def __init__(self, config):
        super().__init__(config)
        self.tokenizer = None  # set by from_wrapper / from_pretrained; saved by save_pretrained

    def post_init(self):
        super().post_init()
        # the backbone sits inside the wrapper, below a plain module, and post_init looks only at direct children:
        # without this GPT-2's lm_head would not be tied to its input embeddings on loading
        self.all_tied_weights_keys = self.get_expanded_tied_weights_keys(all_submodels=True)

    @classmethod
    def get_init_context(cls, *args, **kwargs):
        """from_pretrained's construction contexts without the meta device: the wrappers compute their segment
        layout from tensors at construction, which a meta tensor cannot give."""
        return [context for context in super().get_init_context(*args, **kwargs)
                if not isinstance(context, torch.device)]

    def _move_missing_keys_from_meta_to_device(self, *args, **kwargs):
        """Nothing to move: built off the meta device, the model's weights missing from the file keep their
        initialisation, and its non-persistent buffers (position ids, memory token ids) their values."""

    @property
    def max_n_segments(self) -> int:
        return self.rmt.max_n_segments

    @max_n_segments.setter
    def max_n_segments(self, value: int):
        self.rmt.max_n_segments = value

    @property
    def segment_size(self) -> int:
        return self.rmt.segment_size

    @classmethod
    def from_wrapper(cls, wrapper, tokenizer, task=None, task_labels=None):
        """The Hugging Face model holding a copy of a trained wrapper's weights, with its tokenizer."""
        model = cls(cls.config_from_wrapper(wrapper, tokenizer, task=task, task_labels=task_labels))
        model.rmt.load_state_dict(wrapper.state_dict())
        model.tokenizer = tokenizer
        return model.eval()

    def save_pretrained(self, save_directory, *args, push_to_hub=False, **kwargs):
        """Write config.json, model.safetensors and the tokenizer; with `push_to_hub`, upload the same files
        (`push_to_hub` saves into a folder of its own and uploads all of it, the tokenizer included)."""
        hub_kwargs = {name: kwargs.pop(name) for name in ("repo_id", "commit_message", "create_pr", "private")
                      if name in kwargs}
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(save_directory)
        if push_to_hub:
            self.push_to_hub(hub_kwargs.pop("repo_id", Path(save_directory).name), token=kwargs.get("token"),
                             **hub_kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """The saved model, with the tokenizer of its folder when it holds one (else `tokenizer` is None)."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True adds a dict
        folder = Path(pretrained_model_name_or_path)
        if (folder / TOKENIZER_CONFIG_FILE).is_file():
            model.tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        return loaded


def saved_memory_config(wrapper) -> MemoryConfig:
    """The wrapper's memory configuration as a model folder keeps it: without segment checkpointing, a choice of
    how to train that a loaded model makes again (folders before the nested config did not keep it either)."""
    return dataclasses.replace(wrapper.memory_config, segment_checkpointing=False)


def backbone_config_dict(backbone, num_added_tokens: int = 0) -> dict:
    """The backbone's config as it was before the wrapper added `num_added_tokens` embedding rows."""
    config = copy.deepcopy(backbone.config)
    config.vocab_size -= num_added_tokens
    values = config.to_dict()
    values.pop("auto_map", None)
    return values


class RMTForSequenceClassification(RMTPreTrainedModel):
    """`RMTEncoderForSequenceClassification` as a Hugging Face model (`AutoModelForSequenceClassification`)."""

    config_class = RMTEncoderConfig

    def __init__(self, config: RMTEncoderConfig):
        super().__init__(config)
        backbone_config = copy.deepcopy(config.backbone_model_config)
        backbone = AutoModelForSequenceClassification.from_config(backbone_config, trust_remote_code=False)
        self.rmt = RMTEncoderForSequenceClassification(
            backbone, tokenizer=SavedTokenIds(config.layout_token_ids or {}, backbone_config.vocab_size),
            memory_config=config.memory_config, sum_loss=config.sum_loss)
        self.post_init()

    @classmethod
    def config_from_wrapper(cls, wrapper, tokenizer, task=None, task_labels=None) -> RMTEncoderConfig:
        labels = list(task_labels) if task_labels is not None else None
        return RMTEncoderConfig(
            backbone_model_config=backbone_config_dict(wrapper.model, wrapper.num_mem_tokens),
            memory_config=saved_memory_config(wrapper), sum_loss=wrapper.sum_loss,
            layout_token_ids=special_token_ids(tokenizer), task=task, task_labels=labels,
            id2label=dict(enumerate(labels)) if labels else None)

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        """The wrapper's forward (kwargs such as show_progress pass through)."""
        return self.rmt(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)


class RMTForCausalLM(RMTPreTrainedModel):
    """`MemoryCell` + `RecurrentWrapper` as a Hugging Face model (`AutoModelForCausalLM`)."""

    config_class = RMTDecoderConfig

    def __init__(self, config: RMTDecoderConfig):
        super().__init__(config)
        backbone = AutoModelForCausalLM.from_config(copy.deepcopy(config.backbone_model_config),
                                                    trust_remote_code=False)
        self.rmt = RecurrentWrapper(MemoryCell(backbone, memory_config=config.memory_config))
        self.post_init()

    @classmethod
    def config_from_wrapper(cls, wrapper, tokenizer, task=None, task_labels=None) -> RMTDecoderConfig:
        return RMTDecoderConfig(
            backbone_model_config=backbone_config_dict(wrapper.memory_cell.model),
            memory_config=saved_memory_config(wrapper), task=task,
            task_labels=list(task_labels) if task_labels is not None else None)

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        """The wrapper's forward (labels_mask, return_logits, ... pass through)."""
        return self.rmt(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)

    def generate(self, input_ids, attention_mask=None, **generate_kwargs):
        """The wrapper's generate: all but the last segment into memory, then generation from the last."""
        return self.rmt.generate(input_ids, attention_mask=attention_mask, **generate_kwargs)


def register_auto_classes() -> None:
    """Make the RMT model types known to AutoConfig, AutoModelForSequenceClassification and AutoModelForCausalLM
    (idempotent)."""
    AutoConfig.register(ENCODER_MODEL_TYPE, RMTEncoderConfig, exist_ok=True)
    AutoConfig.register(DECODER_MODEL_TYPE, RMTDecoderConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(RMTEncoderConfig, RMTForSequenceClassification, exist_ok=True)
    AutoModelForCausalLM.register(RMTDecoderConfig, RMTForCausalLM, exist_ok=True)
