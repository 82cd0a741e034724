"""Model folders (modeling_rmt.pretrained, babilong.export, babilong.answer, babilong.model_folder): the wrappers
saved and loaded the Hugging Face way, the model card of an exported run, answering from a long text, and bad
input refused before anything in the folder is loaded."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BertConfig, GPT2Config

import modeling_rmt
from babilong import evaluate_official as official
from babilong import export, generate_babi, plot
from babilong.answer import main as answer_main
from babilong.dataset import GEN_TEXT
from babilong.evaluate_official import prompt_ids
from babilong.model_folder import load_model_folder
from babilong.results import RESULTS_FILE, read_results
from babilong.tasks import get_task
from modeling_rmt.pretrained import FLAT_MEMORY_DEFAULTS
from conftest import TINY_BERT, TINY_GPT2, run_in_process
from lm_experiments_tools.run_config import CONFIG_FILE
from rmt_experiments.offline_model import eos_token_id, load_tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
INPUT_SIZE, NUM_MEM_TOKENS, D_MEM = 32, 2, 4
OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(REPO_ROOT)}
LABELS = ["bathroom", "garden", "kitchen"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def tiny_wrapper(kind: str, memory_type: str, tokenizer):
    """A random tiny wrapper; associative value projections non-zero, so that the memory carries something."""
    torch.manual_seed(0)
    options = {"memory_type": memory_type, "d_mem": D_MEM}
    if kind == "encoder":
        config = BertConfig(**{k: v for k, v in TINY_BERT.items() if k != "model_type"}, num_labels=len(LABELS))
        backbone = AutoModelForSequenceClassification.from_config(config)
        wrapper = modeling_rmt.RMTEncoderForSequenceClassification(backbone, NUM_MEM_TOKENS, tokenizer, INPUT_SIZE, 4,
                                                                   **options)
    else:
        backbone = AutoModelForCausalLM.from_config(GPT2Config(**{k: v for k, v in TINY_GPT2.items()
                                                                  if k != "model_type"}))
        cell = modeling_rmt.MemoryCell(backbone, NUM_MEM_TOKENS, **options)
        segment_size = INPUT_SIZE - modeling_rmt.decoder.memory_positions(NUM_MEM_TOKENS, memory_type)
        wrapper = modeling_rmt.RecurrentWrapper(cell, segment_size, 4)
    memory = getattr(wrapper, "associative", None) or getattr(getattr(wrapper, "memory_cell", None), "associative", None)
    for layer in memory.layers if memory is not None else []:
        torch.nn.init.normal_(layer.value.weight, std=0.5)
    return wrapper.eval()


def hf_model(kind: str, memory_type: str, tokenizer):
    cls = modeling_rmt.RMTForSequenceClassification if kind == "encoder" else modeling_rmt.RMTForCausalLM
    return cls.from_wrapper(tiny_wrapper(kind, memory_type, tokenizer), tokenizer, task="qa1", task_labels=LABELS)


RELOAD_SCRIPT = """
import sys, torch
import modeling_rmt
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
folder, kind = sys.argv[1], sys.argv[2]
auto = AutoModelForSequenceClassification if kind == "encoder" else AutoModelForCausalLM
model = auto.from_pretrained(folder)
ids = torch.load(folder + "/../ids.pt")
with torch.no_grad():
    torch.save({"logits": model(input_ids=ids).logits, "class": type(model).__name__,
                "tokenizer": type(model.tokenizer).__name__}, folder + "/../reloaded.pt")
"""


@pytest.mark.slow
@pytest.mark.parametrize("memory_type", ["tokens", "associative"])
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_a_saved_model_gives_the_same_logits_in_a_fresh_process(tmp_path, tokenizer, kind, memory_type):
    model = hf_model(kind, memory_type, tokenizer)
    ids = torch.randint(1000, 2000, (2, 3 * INPUT_SIZE))  # several segments, so the memory matters
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "model")
    torch.save(ids, tmp_path / "ids.pt")
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= {p.name for p in (tmp_path / "model").iterdir()}
    result = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, str(tmp_path / "model"), kind], env=OFFLINE_ENV,
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    reloaded = torch.load(tmp_path / "reloaded.pt")
    assert reloaded["class"] == type(model).__name__ and reloaded["tokenizer"] == type(tokenizer).__name__
    assert torch.equal(reloaded["logits"], expected)
    config = json.loads((tmp_path / "model" / CONFIG_FILE).read_text())
    memory = config["memory_config"]
    assert (memory["num_mem_tokens"], memory["memory_type"], memory["input_size"]) == (
        NUM_MEM_TOKENS, memory_type, INPUT_SIZE)
    assert not set(FLAT_MEMORY_DEFAULTS) & set(config)  # one place for the memory configuration
    if memory_type == "associative":
        assert memory["d_mem"] == D_MEM
    assert config["backbone_model_config"]["model_type"] == ("bert" if kind == "encoder" else "gpt2")
    assert config["task_labels"] == LABELS and "auto_map" not in config


@pytest.mark.parametrize("memory_type", ["tokens", "associative"])
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_push_to_hub_uploads_config_weights_and_tokenizer(tokenizer, monkeypatch, kind, memory_type):
    from transformers.utils import hub
    uploaded = {}

    def record_upload(self, folder, repo_id, *args, **kwargs):
        uploaded.update(repo_id=repo_id, files=sorted(p.name for p in Path(folder).iterdir()))

    monkeypatch.setattr(hub, "hf_api", lambda: SimpleNamespace(
        create_repo=lambda repo_id, **kwargs: SimpleNamespace(repo_id=f"user/{repo_id}")))
    monkeypatch.setattr(hub, "create_and_tag_model_card", lambda *args, **kwargs: SimpleNamespace(save=lambda path: None))
    monkeypatch.setattr(hub.PushToHubMixin, "_upload_modified_files", record_upload)
    hf_model(kind, memory_type, tokenizer).push_to_hub("rmt-test")
    assert uploaded["repo_id"] == "user/rmt-test"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(uploaded["files"])


# ---- exported run folders -------------------------------------------------------------------------------------

def train_run(tmp_path: Path, model_type: str, memory_type: str) -> Path:
    """A tiny qa1 curriculum (4 then 5 segments, also evaluated at 6); returns the last stage's run folder."""
    from babilong import experiment as run_babilong
    babi = tmp_path / "babi"
    generate_babi.generate(str(babi), ["qa1"], 20, 10, seed=0)
    config = tmp_path / f"{model_type}.json"
    config.write_text(json.dumps(TINY_BERT if model_type == "encoder" else TINY_GPT2))
    run_babilong.main(["--task", "qa1", "--babi_path", str(babi), "--model_type", model_type, "--model_cfg",
                       str(config), "--input_size", str(INPUT_SIZE), "--num_mem_tokens", str(NUM_MEM_TOKENS),
                       "--memory_type", memory_type, "--d_mem", str(D_MEM), "--curriculum", "4,5", "--eval_n_segments", "6", "--num_valid_samples", "4",
                       "--batch_size", "2", "--iters", "2", "--lr", "1e-3", "--valid_interval", "2", "--save_best",
                       "--optimize_metric", "exact_match", "--optimize_mode", "max",
                       "--model_path", str(tmp_path / "runs" / "seg{n_segments}")])
    return tmp_path / "runs" / "seg5"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """exports(model type, memory type): (run folder, model folder) of a tiny trained run, trained and exported
    once for the module's tests."""
    made = {}

    def export_of(model_type: str, memory_type: str) -> tuple:
        if (model_type, memory_type) not in made:
            tmp_path = tmp_path_factory.mktemp(f"{model_type}-{memory_type}")
            run_dir = train_run(tmp_path, model_type, memory_type)
            export.main([str(run_dir), "--out", str(tmp_path / "model")])
            made[model_type, memory_type] = run_dir, tmp_path / "model"
        return made[model_type, memory_type]
    return export_of


@pytest.fixture(scope="module", params=[("encoder", "tokens"), ("decoder", "tokens"), ("encoder", "associative"),
                                        ("decoder", "associative")], ids="-".join)
def exported(request, exports):
    """(run folder, model folder) of each model type with each memory type."""
    return exports(*request.param)


@pytest.fixture(scope="module", params=["encoder", "decoder"])
def exported_tokens(request, exports):
    """(run folder, model folder) of each model type with memory tokens: for what does not depend on the memory."""
    return exports(request.param, "tokens")


def trained_args(run_dir: Path) -> dict:
    return json.loads((run_dir / CONFIG_FILE).read_text())["args"]


def card_rows(card: str, header: str) -> list:
    """The rows of the markdown table under `header` in the card, as lists of cell texts."""
    section = card.split(header, 1)[1].split("\n## ", 1)[0]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| task |") and not line.startswith("| stage |")]


def test_the_card_tables_equal_the_records_and_the_curriculum(exported):
    run_dir, out = exported
    card = (out / export.CARD_FILE).read_text()
    records = plot.select_lines(read_results(run_dir / RESULTS_FILE))
    (points,) = records.values()
    rows = card_rows(card, "## Accuracy against input length")
    assert [(int(r[3]), int(r[4].replace(",", "")), float(r[5]), int(r[6])) for r in rows] == [
        (p["n_segments"], p["input_seq_len"], round(p["accuracy"], 1), p["n_samples"]) for p in points]
    assert [r["n_segments"] for r in points] == [5, 6]  # the stage at its length, then the longer evaluation
    stages = card_rows(card, "## Curriculum")
    assert [(int(s[1]), int(s[2])) for s in stages] == [
        (n, json.loads((run_dir.parent / f"seg{n}" / CONFIG_FILE).read_text())["args"]["input_seq_len"])
        for n in (4, 5)]
    assert f"![accuracy against input length]({export.PLOT_FILE})" in card
    assert (out / export.PLOT_FILE).read_bytes().startswith(b"\x89PNG")
    command = card.split("```bash\n", 1)[1].split("\n```", 1)[0]
    trained = json.loads((run_dir / CONFIG_FILE).read_text())
    assert shlex.split(command)[1:] == trained["environment"]["command"]
    memory_line = next(line for line in card.splitlines() if line.startswith("- Memory:"))
    expected = {"tokens": f"- Memory: tokens, {NUM_MEM_TOKENS} memory tokens",
                "associative": f"- Memory: associative, {NUM_MEM_TOKENS} memory tokens, d_mem {D_MEM}"}
    assert memory_line == expected[trained_args(run_dir)["memory_type"]]


def test_without_a_recorded_command_the_card_rebuilds_it_from_the_args(exported_tokens):
    run_dir, _ = exported_tokens
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    command = shlex.split(export.training_command({"args": config["args"]}))
    assert command[:2] == ["python", export.ENTRY_SCRIPT]
    assert command[command.index("--task") + 1] == "qa1" and "--save_best" in command


def test_the_exported_model_answers_as_the_run_folder_does(exported):
    run_dir, out = exported
    inputs = [f"Mary went to the kitchen. {'The sky is blue. ' * n}John moved to the garden." for n in (1, 5, 12)]
    questions = ["Where is Mary?", "Where is John?", "Where is Mary?"]
    from_run = official.run_predictor(str(run_dir), batch_size=2)
    from_folder = official.run_predictor(str(out), batch_size=2)
    assert from_folder.answer(inputs, questions) == from_run.answer(inputs, questions)
    assert from_folder.labels == from_run.labels


def test_model_cpt_takes_a_model_folder_as_it_takes_the_run_folder(exported, tmp_path):
    from babilong import experiment as run_babilong
    run_dir, out = exported
    trained = trained_args(run_dir)

    def validate(model_cpt, results):
        run_babilong.main(["--task", "qa1", "--babi_path", trained["babi_path"], "--model_type", trained["model_type"],
                           "--model_cfg", trained["model_cfg"], "--input_size", str(INPUT_SIZE), "--num_mem_tokens",
                           str(NUM_MEM_TOKENS), "--memory_type", trained["memory_type"], "--d_mem", str(D_MEM),
                           "--max_n_segments", "6", "--num_valid_samples", "4", "--batch_size",
                           "2", "--validate_only", "--model_cpt", str(model_cpt), "--model_path", str(results)])
        (record,) = read_results(results / RESULTS_FILE)
        return record

    from_run, from_folder = validate(run_dir, tmp_path / "from_run"), validate(out, tmp_path / "from_folder")
    assert from_folder["accuracy"] == from_run["accuracy"] and from_folder["n_samples"] == from_run["n_samples"] == 4
    assert from_folder["trained_n_segments"] == from_run["trained_n_segments"] == 5


def test_model_cpt_refuses_a_model_folder_of_another_memory(exported_tokens, tmp_path, capsys):
    from babilong import experiment as run_babilong
    run_dir, out = exported_tokens
    trained = trained_args(run_dir)
    with pytest.raises(SystemExit) as exited:
        run_babilong.main(["--task", "qa1", "--babi_path", trained["babi_path"], "--model_type", trained["model_type"],
                           "--model_cfg", trained["model_cfg"], "--input_size", str(INPUT_SIZE), "--num_mem_tokens",
                           str(NUM_MEM_TOKENS + 1), "--validate_only", "--model_cpt", str(out),
                           "--model_path", str(tmp_path / "eval")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(err) == 1
    assert f"was trained with num_mem_tokens={NUM_MEM_TOKENS}" in err[0]


def story(babi_path: Path, n_background: int) -> tuple:
    """(context, question) of a generated qa1 story hidden in background sentences."""
    sample = get_task("qa1", str(babi_path)).draw(np.random.default_rng(0), 3, "valid")
    background = [f"Sentence number {i} of the background is about nothing at all." for i in range(n_background)]
    middle = n_background // 2
    context = " ".join(background[:middle] + list(sample.facts) + background[middle:])
    return context, sample.question


def own_prediction(loaded: tuple, context: str, question: str) -> tuple:
    """(answer text, probability or None, prompt ids) of the model itself, without babilong.answer: the encoder's
    top label over the prompt, the decoder's greedy generation after prompt + GEN decoded as answer decodes it."""
    model_type, tokenizer, model, labels = loaded
    pieces = (context, question) if model_type == "encoder" else (context, question, GEN_TEXT)
    ids = prompt_ids(tokenizer, *pieces)
    model.max_n_segments = -(-len(ids) // model.segment_size)
    with torch.no_grad():
        if model_type == "encoder":
            probabilities = model(input_ids=ids[None]).logits[0].softmax(-1)
            return labels[int(probabilities.argmax())], float(probabilities.max()), ids
        longest = max(len(tokenizer.encode(label, add_special_tokens=False)) for label in labels)
        generated = model.generate(ids[None], max_new_tokens=longest + 1, eos_token_id=eos_token_id(tokenizer),
                                   pad_token_id=tokenizer.pad_token_id, do_sample=False)
    return tokenizer.decode(generated[0], skip_special_tokens=True).strip(), None, ids


def progress_counts(stderr: str) -> list:
    """The (done, total) counts that the segments progress bar showed, in order."""
    return [(int(done), int(total)) for done, total in re.findall(r"segments: +\d+%\|[^|]*\| (\d+)/(\d+)", stderr)]


@pytest.mark.slow
def test_answer_gives_the_models_own_prediction_for_a_long_story(exported):
    run_dir, out = exported
    context, question = story(run_dir.parent.parent / "babi", n_background=40)
    (out.parent / "story.txt").write_text(context, encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "babilong.answer", str(out), "--context",
                             str(out.parent / "story.txt"), "--question", question], env=OFFLINE_ENV,
                            capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = load_model_folder(out)
    text, probability, ids = own_prediction(loaded, context, question)
    n_segments = -(-len(ids) // loaded[2].segment_size)
    assert n_segments > 5  # the story is read over many segments
    answer_line = re.fullmatch(r"answer: (.*?)( \(probability ([0-9.]+)\))?", result.stdout.splitlines()[0])
    assert answer_line.group(1) == text
    if probability is not None:
        assert float(answer_line.group(3)) == pytest.approx(probability, abs=1e-4)
    speed = re.fullmatch(r"read ([0-9,]+) tokens in (\d+) segments in [0-9.]+ s: [0-9,]+ tokens/s",
                         result.stdout.splitlines()[1])
    assert int(speed.group(1).replace(",", "")) == len(ids) and int(speed.group(2)) == n_segments
    counts = progress_counts(result.stderr)
    assert counts[-1] == (n_segments, n_segments) and all(total == n_segments for _, total in counts)


def test_evaluate_official_scores_a_model_folder_as_its_run_folder(exported, tmp_path, capsys):
    from test_evaluate_official import make_dataset  # the official layout
    run_dir, out = exported
    dataset = make_dataset(tmp_path / "babilong", lengths=("0k", "4k"))
    written = {}
    for name, model_cpt in (("run", run_dir), ("folder", out)):
        result = run_in_process(official.main, ["--model_cpt", model_cpt, "--dataset", dataset, "--lengths", "0k,4k",
                                                "--tasks", "qa1,qa5", "--out", tmp_path / name], capsys)
        assert result.returncode == 0, result.stderr
        written[name] = {path.name: path.read_text() for path in sorted((tmp_path / name).iterdir())}
    assert {"qa1_0k.csv", "qa5_4k.csv", "summary.json", "summary.md"} <= set(written["folder"])
    assert written["folder"] == written["run"]


def test_export_push_to_hub_uploads_the_card_and_the_plot_with_the_model(exported_tokens, tmp_path, monkeypatch):
    import huggingface_hub
    run_dir, _ = exported_tokens
    uploads = []

    class RecordingApi:  # the hub calls of push_folder, recorded instead of sent
        def create_repo(self, repo_id, **kwargs):
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, repo_id, folder_path, **kwargs):
            files = {path.name: path.read_bytes() for path in Path(folder_path).iterdir()}
            uploads.append({"repo_id": repo_id, "folder": Path(folder_path), "files": files})
            return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    export.main([str(run_dir), "--out", str(tmp_path / "model"), "--push_to_hub", "user/rmt-qa1"])
    (upload,) = uploads
    assert upload["repo_id"] == "user/rmt-qa1" and upload["folder"] == tmp_path / "model"
    assert {export.CARD_FILE, export.PLOT_FILE, "config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= set(upload["files"])
    assert upload["files"][export.CARD_FILE].decode().startswith("---\nlibrary_name: transformers")
    assert upload["files"][export.PLOT_FILE].startswith(b"\x89PNG")


# ---- bad input ------------------------------------------------------------------------------------------------

EVIL_MODULE = "from pathlib import Path\nPath({marker!r}).write_text('imported')\n"


def booby_trapped(folder: Path, marker: Path) -> None:
    """Python files in the folder that leave a marker file when imported."""
    for name in ("evil.py", "modeling_evil.py", "configuration_evil.py"):
        (folder / name).write_text(EVIL_MODULE.format(marker=str(marker)))


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / CONFIG_FILE).read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    (folder / CONFIG_FILE).write_text(json.dumps(config))


def bad_folder(exported_folder: Path, tmp_path: Path, case: str) -> Path:
    folder = tmp_path / "folder"
    shutil.copytree(exported_folder, folder)
    if case == "empty":
        shutil.rmtree(folder)
        folder.mkdir()
    elif case == "run_folder":
        (folder / CONFIG_FILE).write_text(json.dumps({"args": {"task": "qa1"}}))
    elif case == "other_model":
        edit_config(folder, model_type="bert")
    elif case == "no_tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            (folder / name).unlink(missing_ok=True)
    elif case == "auto_map":
        edit_config(folder, auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                                      "AutoModelForSequenceClassification": "modeling_evil.Evil",
                                      "AutoModelForCausalLM": "modeling_evil.Evil"})
    elif case == "backbone_auto_map":
        edit_config(folder, backbone_model_config={"auto_map": {"AutoModel": "evil.Evil"}})
    elif case == "architectures":
        edit_config(folder, architectures=["evil.Evil"])
    elif case == "unknown_backbone":
        edit_config(folder, backbone_model_config={"model_type": "evil"})
    elif case == "partial_tokenizer":
        (folder / "tokenizer.json").unlink()  # tokenizer_config.json stays
    elif case == "unknown_tokenizer_class":
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["tokenizer_class"] = "EvilTokenizer"
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    elif case == "corrupt_weights":
        (folder / "model.safetensors").write_bytes(b"not safetensors at all")
    elif case == "truncated_weights":
        weights = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    elif case == "tokenizer_auto_map":
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


BAD_FOLDERS = [
    ("empty", "has no config.json: expected a model folder"),
    ("run_folder", "model_type None: expected an RMT model folder"),
    ("other_model", "model_type 'bert': expected an RMT model folder"),
    ("no_tokenizer", "has no tokenizer (tokenizer_config.json)"),
    ("auto_map", "config has auto_map"),
    ("backbone_auto_map", "backbone_model_config has auto_map"),
    ("architectures", "architectures ['evil.Evil']: expected ["),
    ("unknown_backbone", "backbone model_type 'evil': expected a transformers model type"),
    ("tokenizer_auto_map", "tokenizer_config.json has auto_map"),
    ("partial_tokenizer", "has no tokenizer.json and no vocab.txt: expected the vocabulary of its BertTokenizer"),
    ("unknown_tokenizer_class", "tokenizer_class 'EvilTokenizer': expected a tokenizer class of transformers"),
    ("corrupt_weights", "model.safetensors is not a readable safetensors file"),
    ("truncated_weights", "model.safetensors is not a readable safetensors file"),
]


def one_line_exit_2(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("case, message", BAD_FOLDERS)
def test_answer_refuses_a_bad_model_folder_without_importing_from_it(exported_tokens, tmp_path, case, message, capsys,
                                                                     monkeypatch):
    _, out = exported_tokens
    folder = bad_folder(out, tmp_path, case)
    marker = tmp_path / "imported.txt"
    booby_trapped(folder, marker)
    (tmp_path / "story.txt").write_text("Mary went to the kitchen.")
    monkeypatch.chdir(tmp_path)  # as `python -m` from there: the folder's parent is importable
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(folder))
    result = run_in_process(answer_main, [folder, "--context", tmp_path / "story.txt", "--question", "Where is Mary?"], capsys)
    assert message in one_line_exit_2(result)
    assert not marker.exists()
    assert not {"evil", "modeling_evil", "configuration_evil"} & set(sys.modules)


@pytest.mark.slow
def test_the_answer_command_refuses_a_folder_that_would_import_its_own_code(exported_tokens, tmp_path):
    _, out = exported_tokens
    folder = bad_folder(out, tmp_path, "auto_map")
    marker = tmp_path / "imported.txt"
    booby_trapped(folder, marker)
    (tmp_path / "story.txt").write_text("Mary went to the kitchen.")
    result = subprocess.run([sys.executable, "-m", "babilong.answer", str(folder), "--context",
                             str(tmp_path / "story.txt"), "--question", "Where is Mary?"], env=OFFLINE_ENV,
                            capture_output=True, text=True, cwd=tmp_path)
    assert "config has auto_map" in one_line_exit_2(result)
    assert not marker.exists()


@pytest.mark.slow
def test_evaluate_official_refuses_a_bad_model_folder(exported_tokens, tmp_path):
    from test_evaluate_official import make_dataset  # the official layout
    _, out = exported_tokens
    folder = bad_folder(out, tmp_path, "auto_map")
    marker = tmp_path / "imported.txt"
    booby_trapped(folder, marker)
    dataset = make_dataset(tmp_path / "babilong", lengths=("0k",))
    result = subprocess.run([sys.executable, "-m", "babilong.evaluate_official", "--model_cpt", str(folder),
                             "--dataset", dataset, "--tasks", "qa1", "--out", str(tmp_path / "out")],
                            env=OFFLINE_ENV, capture_output=True, text=True, cwd=REPO_ROOT)
    assert "config has auto_map" in one_line_exit_2(result)
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe\x00\x01binary", "is not UTF-8 text"),
    (b"text with a \x00 NUL byte", "holds NUL bytes"),
])
def test_answer_refuses_a_context_that_is_not_text(exported_tokens, tmp_path, content, message, capsys):
    _, out = exported_tokens
    (tmp_path / "context.bin").write_bytes(content)
    result = run_in_process(answer_main, [out, "--context", tmp_path / "context.bin", "--question", "Where is Mary?"], capsys)
    assert message in one_line_exit_2(result)


def test_export_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    result = run_in_process(export.main, [tmp_path, "--out", tmp_path / "out"], capsys)
    assert "expected a run folder with config.json and model_best.pth" in one_line_exit_2(result)
    assert not (tmp_path / "out").exists()
