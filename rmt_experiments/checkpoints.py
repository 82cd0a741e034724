"""The weights of a run folder (`--model_cpt`) and the classes that a run folder's config.json may name."""
import importlib
import json
import logging
from pathlib import Path

import torch

from lm_experiments_tools.checkpoint import BEST_CHECKPOINT_NAME, CheckpointError, load_model_weights
from lm_experiments_tools.errors import BadInputError
from lm_experiments_tools.run_config import CONFIG_FILE

logger = logging.getLogger(__name__)

REGISTERED_MODULES = ("modeling_rmt",)  # the project's own wrappers: a name in the package's __all__


def registered_class(name: str, source: str):
    """The class `name` ('module:Class') from the project's registry: a modeling_rmt wrapper (modeling_rmt.__all__)
    or a transformers model class (an Auto* class or a PreTrainedModel subclass exported by transformers).

    For names read from a file (a run folder's config.json): a file must never choose code to import, so any other
    name is refused before its module is imported.

    Args:
        name: 'module:Class'.
        source: what the name came from, named in the error (e.g. "run/config.json model_cls").

    Raises:
        BadInputError: the name is not in the registry.
    """
    module_name, _, attr = name.partition(":") if isinstance(name, str) else ("", "", "")
    if attr.isidentifier() and not attr.startswith("_"):
        if module_name in REGISTERED_MODULES:
            module = importlib.import_module(module_name)
            if attr in getattr(module, "__all__", ()):
                return getattr(module, attr)
        if module_name == "transformers":
            import transformers
            from transformers.models.auto.auto_factory import _BaseAutoModelClass
            cls = getattr(transformers, attr, None)
            if isinstance(cls, type) and issubclass(cls, (transformers.PreTrainedModel, _BaseAutoModelClass)):
                return cls
    raise BadInputError(f"{source} {name!r} is not a registered class: expected a modeling_rmt wrapper or a "
                        "transformers model class as module:Class (a file never chooses code to import)")


def is_model_folder(path) -> bool:
    """Whether `path` is meant as a model folder (babilong.export): its config.json has a model_type, where a run
    folder's has args."""
    config_file = Path(path) / CONFIG_FILE
    if not config_file.is_file():
        return False
    try:
        return "model_type" in json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError):
        return False


def load_run_weights(model: torch.nn.Module, run_dir) -> Path:
    """Load the weights of run_dir/model_best.pth (`--model_cpt`) into the model; returns the file.

    Raises:
        BadInputError: the checkpoint holds weights of another model, named with the mismatching tensors.
    """
    path = Path(run_dir) / BEST_CHECKPOINT_NAME
    try:
        load_model_weights(model, path)
    except CheckpointError as error:
        raise BadInputError(f"--model_cpt {str(run_dir)!r} does not fit this model: {error}; expected a run of "
                            "the same backbone and num_mem_tokens") from error
    logger.info(f"model weights loaded from {path}")
    return path
