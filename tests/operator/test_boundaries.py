"""The import boundaries the architecture promises, checked: the operator never imports torch and reaches the
trainer only through a named list of torch-free modules; the trainer never imports the operator; the product
code never imports the local test cluster."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from finetune_operator import TRAINER_MODULES
from tests.conftest import REPO_ROOT

HEAVY = ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "pyarrow")


def imported_modules(root: Path) -> dict[str, set[str]]:
    """Every module each file under ``root`` imports (absolute imports, at any depth in the file)."""
    found: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names |= {f"{node.module}.{alias.name}" for alias in node.names}
        found[str(path.relative_to(REPO_ROOT))] = names
    return found


def test_the_operator_reaches_the_trainer_only_through_the_named_torch_free_modules():
    allowed = set(TRAINER_MODULES) | {m.rpartition(".")[0] for m in TRAINER_MODULES}
    for path, names in imported_modules(REPO_ROOT / "operator" / "src").items():
        trainer = {n for n in names if n.split(".")[0] == "finetune_trainer"}
        # `from finetune_trainer import contract` names the package and the module
        outside = {n for n in trainer if n not in allowed and not any(n.startswith(m + ".") for m in TRAINER_MODULES)}
        assert outside == set(), f"{path} imports {sorted(outside)}"
        assert not {n for n in names if n.split(".")[0] in HEAVY}, path
        assert not {n for n in names if n.split(".")[0] == "finetune_local"}, f"{path} imports the local test cluster"


def test_importing_all_of_the_operator_loads_no_torch_and_no_other_trainer_module():
    program = f"""
import importlib, json, pkgutil, sys
import finetune_operator
for info in pkgutil.walk_packages(finetune_operator.__path__, "finetune_operator."):
    if info.name != "finetune_operator.__main__":
        importlib.import_module(info.name)
for name in {list(TRAINER_MODULES)!r}:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert not [m for m in loaded if m.split(".")[0] in HEAVY], "the operator image has none of these"
    trainer = {m for m in loaded if m.startswith("finetune_trainer")}
    packages = {"finetune_trainer", "finetune_trainer.data", "finetune_trainer.evaluate"}
    assert trainer <= set(TRAINER_MODULES) | packages, sorted(trainer - set(TRAINER_MODULES) - packages)


def test_the_trainer_never_imports_the_operator_or_the_local_cluster():
    for path, names in imported_modules(REPO_ROOT / "trainer" / "src").items():
        assert not {n for n in names if n.split(".")[0] in ("finetune_operator", "finetune_local")}, path


def test_each_reconcile_module_reads_in_one_sitting_and_no_operator_function_runs_over_80_lines():
    source = REPO_ROOT / "operator" / "src" / "finetune_operator"
    long_modules = [f"{p.name}: {n}" for p in sorted((source / "reconcile").glob("*.py")) if (n := len(p.read_text().splitlines())) > 300]
    assert long_modules == [], "reconcile modules over 300 lines"
    long_functions = []
    for path in sorted(source.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long_functions.append(f"{path.relative_to(source)}:{node.lineno} {node.name}")
    assert long_functions == [], "operator functions over 80 lines"
