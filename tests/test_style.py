"""The code base stays ruff-clean (skipped where ruff is not installed)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_clean():
    proc = subprocess.run(["ruff", "check", "--output-format", "concise", "alphaspec", "tests", "bench", "notebooks"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


RUN_FILES = ('"run.json"', '"metrics.csv"', '"decay.csv"', '"alphas.csv"', '"multipliers.csv"', '"checkpoints"')


def test_only_rundir_names_the_files_of_a_run_directory():
    """One owner for the run directory: every other module reads and writes it through train/rundir."""
    owners = {ROOT / "alphaspec" / "train" / "rundir.py"}
    offenders = [f"{path.relative_to(ROOT)}: {name}" for path in (ROOT / "alphaspec").rglob("*.py") if path not in owners
                 for name in RUN_FILES if name in path.read_text(encoding="utf-8")]
    assert offenders == []


def test_compare_and_the_trainer_do_not_import_each_other():
    import ast

    def imports(path: Path) -> set[str]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        return {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}

    assert not any("loop" in m or m.endswith("train") for m in imports(ROOT / "alphaspec" / "compare.py"))
    assert not any("compare" in m for p in (ROOT / "alphaspec" / "train").glob("*.py") for m in imports(p))


def test_parameter_groups_are_built_in_one_module():
    """Decay maps, the trainer's strategies and the hook all build optimizer groups through maps/groups.py:
    no other module writes a dict with both parameters and a decay or learning rate (a map entry's `params`
    is a count, int(...), not a list of tensors)."""
    import ast

    owner = ROOT / "alphaspec" / "maps" / "groups.py"
    offenders = []
    for path in (ROOT / "alphaspec").rglob("*.py"):
        if path == owner:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Dict):
                continue
            keys = {k.value: v for k, v in zip(node.keys, node.values, strict=True) if isinstance(k, ast.Constant)}
            counted = isinstance(keys.get("params"), ast.Call) and getattr(keys["params"].func, "id", "") == "int"
            if "params" in keys and ({"weight_decay", "lr"} & set(keys)) and not counted:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_ratios_and_policies_are_checked_in_one_place():
    """maps/spec.py holds the validators of --ratio and --default-decay; the CLI and TrainConfig ask it."""
    messages = ("0 <= S1 < S2", "use all, matrices or a number", "a decay must be a finite number >= 0")
    owner = ROOT / "alphaspec" / "maps" / "spec.py"
    offenders = [f"{path.relative_to(ROOT)}: {m}" for path in (ROOT / "alphaspec").rglob("*.py") if path != owner
                 for m in messages if m in path.read_text(encoding="utf-8")]
    assert offenders == []


def test_the_core_imports_neither_typer_nor_matplotlib():
    """Everything but the CLI and the modules that draw (plots, map_plots, training_plots, diff_plot, the
    report) loads without typer or matplotlib: a library user pays for neither."""
    import pkgutil
    import sys

    import alphaspec

    drawing = ("alphaspec.cli", "alphaspec.report", "alphaspec.plots", "alphaspec.map_plots",
               "alphaspec.training_plots", "alphaspec.diff_plot", "alphaspec.__main__")
    core = [m.name for m in pkgutil.walk_packages(alphaspec.__path__, "alphaspec.") if not m.name.startswith(drawing)]
    assert "alphaspec.train.loop" in core and "alphaspec.maps.hook" in core
    code = (f"import importlib, sys\nfor m in {core!r}:\n    importlib.import_module(m)\n"
            "    assert not {'typer', 'matplotlib'} & set(sys.modules), m")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
