"""Model folders: a trained RMT saved the Hugging Face way (config.json, model.safetensors, the tokenizer), as
`babilong.export` writes it and `babilong.answer` and `babilong.evaluate_official` read it.

A folder is checked from its JSON files (and the weights file's JSON header) before anything is loaded, so that
nothing in it chooses code to run: its config.json must name one of the RMT model types (`modeling_rmt.pretrained`),
its backbone a transformers model type with a head of the right kind, and neither the model's nor the tokenizer's
config may carry an `auto_map` (remote code) or name an architecture outside this project; the tokenizer's class
must be one of transformers with its vocabulary in the folder, and safetensors must read the weights' header. The
backbone class then comes from transformers' own Auto mapping; nothing is imported from the folder and
`trust_remote_code` stays off.
"""
import json
from pathlib import Path

from lm_experiments_tools.errors import BadInputError
from lm_experiments_tools.run_config import CONFIG_FILE
from rmt_experiments.checkpoints import is_model_folder  # noqa: F401 (the model folders' test, re-exported)
from rmt_experiments.offline_model import ensure_pad_and_eos

WEIGHTS_FILE = "model.safetensors"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_FILE = "tokenizer.json"
# model type of the folder -> (model_type of babilong runs, the project's class, transformers' head mapping)
FOLDER_TYPES = {"rmt_encoder": ("encoder", "RMTForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION"),
                "rmt_decoder": ("decoder", "RMTForCausalLM", "MODEL_FOR_CAUSAL_LM")}


def read_json(path: Path) -> dict:
    """A JSON object from a file; BadInputError naming the file when it is not one."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInputError(f"{path} is not JSON ({error}): expected a JSON object") from error
    if not isinstance(values, dict):
        raise BadInputError(f"{path} holds a {type(values).__name__}: expected a JSON object")
    return values


def _head_model_types(mapping: str) -> set:
    """The transformers model types with a head of the given kind (its Auto mapping, by name only)."""
    from transformers.models.auto import modeling_auto
    return set(getattr(modeling_auto, f"{mapping}_MAPPING_NAMES"))


def check_model_folder(path) -> dict:
    """The folder's config.json values once the folder is checked; BadInputError names the first problem.

    Checked, from the JSON files only: config.json with an RMT model_type, architectures of this project only, no
    auto_map in the model's, the backbone's or the tokenizer's config, a backbone model_type transformers knows
    with the right head, the weights file's header and the whole tokenizer (check_weights, check_tokenizer).
    """
    folder = Path(path)
    if not (folder / CONFIG_FILE).is_file():
        raise BadInputError(f"{str(folder)!r} has no {CONFIG_FILE}: expected a model folder written by "
                            "python -m babilong.export")
    config = read_json(folder / CONFIG_FILE)
    model_type = config.get("model_type")
    if model_type not in FOLDER_TYPES:
        raise BadInputError(f"{folder / CONFIG_FILE}: model_type {model_type!r}: expected an RMT model folder "
                            f"(model_type {' or '.join(FOLDER_TYPES)}) written by python -m babilong.export")
    _, class_name, head = FOLDER_TYPES[model_type]
    backbone = config.get("backbone_model_config")
    if not isinstance(backbone, dict):
        raise BadInputError(f"{folder / CONFIG_FILE}: no backbone_model_config object: expected the backbone's "
                            "config inside")
    for where, values in (("config", config), ("backbone_model_config", backbone)):
        if values.get("auto_map"):
            raise BadInputError(f"{folder / CONFIG_FILE}: {where} has auto_map {values['auto_map']!r}: expected no "
                                "remote code (classes come from this project and transformers only)")
    architectures = config.get("architectures") or [class_name]
    if architectures != [class_name]:
        raise BadInputError(f"{folder / CONFIG_FILE}: architectures {architectures!r}: expected [{class_name!r}]")
    if backbone.get("model_type") not in _head_model_types(head):
        raise BadInputError(f"{folder / CONFIG_FILE}: backbone model_type {backbone.get('model_type')!r}: expected a "
                            f"transformers model type with a {head.lower().replace('model_for_', '')} head")
    check_weights(folder)
    check_tokenizer(folder)
    return config


def check_weights(folder: Path) -> None:
    """BadInputError unless the weights file is there and safetensors reads its header (names, shapes and offsets
    that must fit the file's size); no tensor is loaded."""
    from safetensors import SafetensorError, safe_open
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise BadInputError(f"{str(folder)!r} has no {WEIGHTS_FILE}: expected the model's weights")
    try:
        with safe_open(str(path), framework="pt") as weights:
            weights.keys()
    except (SafetensorError, OSError) as error:
        raise BadInputError(f"{path} is not a readable safetensors file ({error}): expected the weights that "
                            "save_pretrained writes") from error


def _tokenizer_class_names() -> set:
    """The tokenizer classes transformers maps model types to, and its generic ones, by name only (no import)."""
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES
    return {name for name in TOKENIZER_MAPPING_NAMES.values() if name} | {"TokenizersBackend",
                                                                          "PreTrainedTokenizerFast"}


def tokenizer_class(folder: Path, name) -> type:
    """The transformers class that tokenizer_config.json names: its name is checked first, so that only a class of
    transformers is ever imported; a v4 'Fast' name reads as its v5 class."""
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name
    known = isinstance(name, str) and {name, name.removesuffix("Fast")} & _tokenizer_class_names()
    found = tokenizer_class_from_name(name) if known else None
    if found is None:
        raise BadInputError(f"{folder / TOKENIZER_CONFIG_FILE}: tokenizer_class {name!r}: expected a tokenizer class "
                            "of transformers (e.g. 'BertTokenizer')")
    return found


def check_tokenizer(folder: Path) -> None:
    """BadInputError unless the folder holds a whole tokenizer of a transformers class: tokenizer_config.json
    without auto_map, a tokenizer_class transformers knows, and its vocabulary (tokenizer.json, or the class's own
    vocabulary files). Without its vocabulary a tokenizer would load with an empty one and read every word as
    unknown."""
    if not (folder / TOKENIZER_CONFIG_FILE).is_file():
        raise BadInputError(f"{str(folder)!r} has no tokenizer ({TOKENIZER_CONFIG_FILE}): expected the tokenizer "
                            "saved with the model")
    tokenizer_config = read_json(folder / TOKENIZER_CONFIG_FILE)
    if tokenizer_config.get("auto_map"):
        raise BadInputError(f"{folder / TOKENIZER_CONFIG_FILE} has auto_map {tokenizer_config['auto_map']!r}: expected "
                            "no remote code")
    name = tokenizer_config.get("tokenizer_class")
    vocabulary = tokenizer_class(folder, name).vocab_files_names
    if (folder / TOKENIZER_FILE).is_file():
        return
    missing = [file for key, file in vocabulary.items() if key != "tokenizer_file" and not (folder / file).is_file()]
    if missing:
        raise BadInputError(f"{str(folder)!r} has no {TOKENIZER_FILE} and no {', '.join(missing)}: expected the "
                            f"vocabulary of its {name} saved with the model")


def load_model_folder(path) -> tuple:
    """(run model type 'encoder' or 'decoder', tokenizer, model in eval mode, answer labels) of a checked model
    folder, loaded with the Auto class of its type (no trust_remote_code)."""
    config = check_model_folder(path)
    import modeling_rmt  # registers the RMT model types with the Auto classes
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    model_type = FOLDER_TYPES[config["model_type"]][0]
    auto_class = AutoModelForSequenceClassification if model_type == "encoder" else AutoModelForCausalLM
    model = auto_class.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
    if not isinstance(model, modeling_rmt.RMTForSequenceClassification | modeling_rmt.RMTForCausalLM):
        raise BadInputError(f"{path}: loaded a {type(model).__name__}: expected an RMT model")
    labels = model.config.task_labels or list((model.config.id2label or {}).values())
    return model_type, ensure_pad_and_eos(model.tokenizer), model.eval(), labels


def trained_values(path) -> dict:
    """What a model folder's config.json says of its training, in the names of a run folder's args: model_type
    ('encoder' / 'decoder'), num_mem_tokens, memory_type, d_mem, max_n_segments."""
    config = check_model_folder(path)
    memory = config.get("memory_config") or config
    return {"model_type": FOLDER_TYPES[config["model_type"]][0],
            **{name: memory.get(name) for name in ("num_mem_tokens", "memory_type", "d_mem", "max_n_segments")}}


def load_model_folder_weights(model, path) -> Path:
    """Load a checked model folder's weights into a wrapper built by the entry script (`--model_cpt`); returns
    the weights file. BadInputError when they do not fit, naming the mismatch."""
    _, _, folder_model, _ = load_model_folder(path)
    try:
        model.load_state_dict(folder_model.rmt.state_dict())
    except RuntimeError as error:
        reason = str(error).splitlines()[0]
        raise BadInputError(f"--model_cpt {str(path)!r} does not fit this model: {reason}; expected a model folder "
                            "of the same backbone and memory") from error
    return Path(path) / WEIGHTS_FILE
