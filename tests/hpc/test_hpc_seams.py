"""The seam between fyp/ (what a stage computes) and hpc/ (how it is scheduled), checked on the source.

Rules (read from each module's syntax tree, so comments and docstrings never count):
1. fyp/ imports nothing from hpc/ (no `import hpc...`, `from hpc...`, or importlib.import_module("hpc...")).
2. hpc/ imports from fyp/ only the protocol and the run's plumbing (ALLOWED_FYP below); a stage's
   implementation is reached through the registry (fyp.stages.get_stage), never imported by name, and no
   string in hpc/ spells a module path of fyp/ other than those.
3. hpc/ names no stage: no string literal (outside docstrings) is a stage name, or starts with one followed
   by "/", ":" or "." (a store path, a registry entry, a label). Prose that uses the word (help text such as
   "train on several GPUs") is not a name and is not flagged. The stages are walked in the pipeline's order
   (fyp.stages.PIPELINE), which hpc/ imports rather than spells.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

from fyp.stages import PIPELINE, _REGISTRY

ROOT = Path(__file__).resolve().parents[2]
# what hpc/ may import from fyp/, and why
ALLOWED_FYP = {
    "fyp.stages": "the stage protocol and registry",
    "fyp.run": "the run directory and its task records",
    "fyp.config": "config errors and --set parsing",
    "fyp.store": "store errors",
    "fyp.evaluation.scaling": "the scaling sweeps' planner and plots (hpc.scaling launches them)",
}
_NAME = re.compile(r"^(%s)([/:.]|$)" % "|".join(PIPELINE))


def _modules(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))  # `from fyp import x` counts as fyp: write the module out
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))
    return out


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    skip = _docstrings(tree)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip]


def test_fyp_imports_nothing_from_hpc():
    bad = [f"{path.relative_to(ROOT)}:{line} {name}" for path, tree in _modules("fyp")
           for line, name in _imported(tree) if name == "hpc" or name.startswith("hpc.")]
    assert bad == []


def test_hpc_reaches_stage_implementations_only_through_the_registry():
    bad = []
    for path, tree in _modules("hpc"):
        for line, name in _imported(tree):
            if (name == "fyp" or name.startswith("fyp.")) and name not in ALLOWED_FYP:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
        for line, text in _strings(tree):
            for module in re.findall(r"\bfyp(?:\.\w+)+", text):
                if module not in ALLOWED_FYP:
                    bad.append(f"{path.relative_to(ROOT)}:{line} spells {module}")
    assert bad == []
    # the rule would catch what it is for: the registry's entries are exactly such module paths
    assert all(entry.split(":")[0] not in ALLOWED_FYP for entry in _REGISTRY.values())


def test_hpc_names_no_stage():
    bad = [f"{path.relative_to(ROOT)}:{line} {text!r}" for path, tree in _modules("hpc")
           for line, text in _strings(tree) if _NAME.match(text.strip())]
    assert bad == []


def test_the_rules_flag_what_they_should_and_not_prose():
    tree = ast.parse('"""the train stage"""\nimport fyp.dpo.train\n'
                     'x = {"train": 1}\ny = f"scores/{r}"\nz = "score/clip"\nh = "train on several GPUs"\n'
                     'm = importlib.import_module("hpc.submit")\n')
    assert sorted(t for _, t in _strings(tree) if _NAME.match(t.strip())) == ["score/clip", "train"]
    assert (2, "fyp.dpo.train") in _imported(tree) and (7, "hpc.submit") in _imported(tree)


def test_the_train_program_takes_the_train_stage_options(capsys):
    """One table of options: the train program (run once per GPU under srun) parses the stage's own flags."""
    import pytest

    from fyp.dpo.train import main
    from fyp.stages import get_stage

    stage = get_stage("train")
    with pytest.raises(SystemExit):
        main(["--help"])
    usage = capsys.readouterr().out
    assert stage.program is not None and stage.program.module == "fyp.dpo.train"
    for option in stage.options:
        assert option.flag in usage
    assert stage.program.run_flag in usage
