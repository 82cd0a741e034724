"""The layout of the repository as its import graph and its commands: the model package depends on torch and
transformers only, the Trainer library on none of the RMT packages, nothing imports an entry script, and every
`python -m babilong.<command>` and entry script answers --help from a folder that is not the repository root."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
ENTRY_SCRIPTS = ("run_finetuning_babilong_rmt", "run_finetuning_arxiv_rmt")
PROJECT_PACKAGES = ("lm_experiments_tools", "modeling_rmt", "rmt_experiments", "babilong", "arxiv_lm")
MODEL_DEPENDENCIES = {"torch", "transformers", "tqdm", "modeling_rmt"}  # tqdm comes with transformers


def imported_modules(path: Path) -> set:
    """Top-level names of the modules a source file imports, anywhere in it (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def package_imports(package: str) -> set:
    return set().union(*(imported_modules(path) for path in (REPO_ROOT / package).rglob("*.py")))


def babilong_commands() -> list:
    """The babilong modules with a `__main__` guard: the commands of `python -m babilong.<command>`."""
    return sorted(path.stem for path in (REPO_ROOT / "babilong").glob("*.py")
                  if 'if __name__ == "__main__":' in path.read_text())


def test_modeling_rmt_imports_torch_and_transformers_only():
    outside = package_imports("modeling_rmt") - MODEL_DEPENDENCIES - set(sys.stdlib_module_names)
    assert not outside, f"modeling_rmt imports {sorted(outside)}"


def test_trainer_library_imports_no_rmt_package():
    assert not package_imports("lm_experiments_tools") & {"modeling_rmt", "rmt_experiments", "babilong", "arxiv_lm"}


def test_no_module_imports_an_entry_script():
    folders = [*PROJECT_PACKAGES, "benchmarks", "tests", "examples"]
    importers = {str(path.relative_to(REPO_ROOT)) for folder in folders for path in (REPO_ROOT / folder).rglob("*.py")
                 if imported_modules(path) & set(ENTRY_SCRIPTS)}
    assert not importers


@pytest.mark.slow
def test_modeling_rmt_imports_with_the_trainer_library_blocked():
    code = ("import sys; sys.modules['lm_experiments_tools'] = None; import modeling_rmt; "
            "assert not any(name.startswith(('lm_experiments_tools', 'rmt_experiments', 'babilong')) "
            "for name in sys.modules if sys.modules[name] is not None)")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=120)


def test_setup_installs_every_package():
    setup_text = (REPO_ROOT / "setup.py").read_text()
    packages = {path.parent.name for path in REPO_ROOT.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert packages == set(PROJECT_PACKAGES)
    assert all(f'"{package}*"' in setup_text for package in PROJECT_PACKAGES)


HELP_EVERY_COMMAND = """
import contextlib, io, json, runpy, sys
commands, entry_scripts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name in entry_scripts:  # not installed by setup.py: whatever sys.path holds, a package may not import them
    sys.modules[name] = None
codes = {}
for kind, target in commands:
    sys.argv = [target, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module(target, run_name="__main__") if kind == "module" else runpy.run_path(target,
                                                                                                run_name="__main__")
        codes[target] = "no exit"
    except SystemExit as exit:
        codes[target] = exit.code if "usage:" in out.getvalue() else f"exit {exit.code} without usage"
print(json.dumps(codes))
"""


@pytest.mark.slow
def test_every_command_answers_help_outside_the_repository(tmp_path):
    """One process runs each command as `python -m` (or the entry script by path) would, with --help; importing
    torch once keeps this fast. The entry scripts cannot be imported there, as after `pip install -e .`."""
    commands = ([("module", f"babilong.{name}") for name in babilong_commands()]
                + [("path", str(REPO_ROOT / f"{script}.py")) for script in ENTRY_SCRIPTS])
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}  # what `pip install -e .` of this checkout gives
    result = subprocess.run([sys.executable, "-c", HELP_EVERY_COMMAND, json.dumps(commands), json.dumps(ENTRY_SCRIPTS)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    codes = json.loads(result.stdout.splitlines()[-1])
    assert len(codes) == len(commands) >= 10
    assert codes == {target: 0 for _, target in commands}
