"""The code base stays ruff-clean (skipped where ruff is not installed)."""

import re
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
    graph = _import_graph()
    assert not any("loop" in m or m == "alphaspec.train" for m in graph["alphaspec.train.compare"])
    assert not any("compare" in m for name, targets in graph.items() if name.startswith("alphaspec.train.")
                   for m in targets)


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


def test_a_map_becomes_param_groups_in_one_function():
    """Every map (a decay map in Python or in the trainer, a learning-rate map) turns into groups through
    maps.groups.map_param_groups: no other function calls tuned_groups, so riders, expert shares and name
    matching cannot drift apart between them again."""
    import ast

    callers = []
    for path in (ROOT / "alphaspec").rglob("*.py"):
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(fn, ast.FunctionDef) and fn.name != "tuned_groups":
                calls = [n for n in ast.walk(fn) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "tuned_groups"]
                if calls:
                    callers.append(f"{path.relative_to(ROOT)}:{fn.name}")
    assert callers == ["alphaspec/maps/groups.py:map_param_groups"]


def test_ratios_and_policies_are_checked_in_one_place():
    """maps/spec.py holds the validators of --ratio and --default-decay; the CLI and TrainConfig ask it."""
    messages = ("0 <= S1 < S2", "use all, matrices or a number", "a decay must be a finite number >= 0")
    owner = ROOT / "alphaspec" / "maps" / "spec.py"
    offenders = [f"{path.relative_to(ROOT)}: {m}" for path in (ROOT / "alphaspec").rglob("*.py") if path != owner
                 for m in messages if m in path.read_text(encoding="utf-8")]
    assert offenders == []


def test_the_core_imports_neither_click_nor_matplotlib():
    """Everything but the CLI and the modules that draw (plots/*, the report) loads without click or matplotlib:
    a library user pays for neither."""
    import pkgutil
    import sys

    import alphaspec

    drawing = ("alphaspec.cli", "alphaspec.report", "alphaspec.plots.", "alphaspec.__main__")
    core = [m.name for m in pkgutil.walk_packages(alphaspec.__path__, "alphaspec.") if not m.name.startswith(drawing)]
    assert "alphaspec.train.loop" in core and "alphaspec.maps.hook" in core
    code = (f"import importlib, sys\nfor m in {core!r}:\n    importlib.import_module(m)\n"
            "    assert not {'click', 'matplotlib'} & set(sys.modules), m")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


# The package's layers, lowest first: a module imports only from its own layer or a lower one (docs/architecture.md).
LAYERS = {
    "": 0,  # the basics at the top level: errors, choices, files, devices, distributed, the version
    "spectra": 1, "sources": 1,  # the mathematics of one matrix; weights sources (neither imports the other)
    "analysis": 2, "maps": 3, "train": 4, "plots": 5, "report": 6, "cli": 7,
}
BASICS = {"__init__", "__main__", "_entry", "_lazy", "_version", "choices", "devices", "digests", "distributed", "errors",
          "files"}
# Module paths of the flat layout, gone since the package was laid out in folders: nothing may name them.
REMOVED = ("bulk", "checkpoint", "compare", "cpu_threads", "decay", "decayspec", "deltas", "diagnose",
           "diff", "diff_plot", "esd", "farms", "gguf_dequant", "gguf_header", "gguf_reader", "hook", "integrations",
           "map_plots", "memory", "modules", "output", "paper", "powerlaw", "random_baseline", "randomize",
           "reader", "sharded", "spectral_metrics", "training_plots")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Every import of an alphaspec module by an alphaspec module, at module level or inside a function."""
    import ast

    modules = {_module(p): p for p in (ROOT / "alphaspec").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("alphaspec"):
                targets |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                            for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("alphaspec")}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_no_import_cycles():
    """No two modules import each other, directly or around a circle, not even from inside a function."""
    graph = _import_graph()
    cycles, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    assert cycles == []


def test_packages_import_only_downwards():
    """sources and spectra know nothing of the analysis, the analysis nothing of maps, maps nothing of training,
    and so on up to the CLI; the package's face (alphaspec/__init__, __main__) may name anything."""
    def layer(module: str) -> int:
        parts = module.split(".")
        return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0

    def folder(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 and parts[1] in LAYERS else ""

    face = {"alphaspec", "alphaspec.__main__", "alphaspec._entry"}
    upward = [f"{a} -> {b}" for a, targets in _import_graph().items() if a not in face for b in targets
              if b not in face and (layer(b) > layer(a) or {folder(a), folder(b)} == {"sources", "spectra"})]
    assert upward == []


def test_the_top_level_holds_only_the_face_and_the_basics():
    flat = {p.stem for p in (ROOT / "alphaspec").glob("*.py")}
    folders = {p.name for p in (ROOT / "alphaspec").iterdir() if (p / "__init__.py").exists()}
    assert flat == BASICS and folders == set(LAYERS) - {""}


def test_no_removed_module_path_is_named():
    """Nothing imports, patches or documents a module path of the flat layout (there are no shims to catch it)."""
    import re

    names = "|".join(REMOVED)  # and the two modules that became folders, analysis.py and plots.py
    pattern = re.compile(rf"\balphaspec[./]({names})\b(?!-)|\balphaspec/(analysis|plots)\.py"
                         rf"|^\s*from alphaspec import .*\b({names})\b", re.M)
    files = [p for d in ("alphaspec", "tests", "bench", "docs", "notebooks") for p in (ROOT / d).rglob("*")
             if p.suffix in (".py", ".md", ".ipynb", ".sh")] + [ROOT / "README.md"]
    hits = [f"{p.relative_to(ROOT)}: {m.group(0).strip()}" for p in files
            for m in pattern.finditer(p.read_text(encoding="utf-8"))]
    assert hits == []


def test_help_loads_neither_torch_nor_pandas():
    """`alphaspec --help` and every `alphaspec CMD --help` answer without importing torch, pandas or numpy
    (seconds of start-up a user waits for nothing)."""
    import sys

    commands = ["", "analyze", "diff", "plot", "report", "decay-map", "map", "tokenize", "train", "compare"]
    code = ("import sys\nfrom alphaspec._entry import main\n"
            f"for cmd in {commands!r}:\n"
            "    sys.argv = ['alphaspec', *([cmd] if cmd else []), '--help']\n"
            "    try:\n        main()\n    except SystemExit as stop:\n        assert not stop.code, (cmd, stop.code)\n"
            "    loaded = {'torch', 'pandas', 'numpy'} & set(sys.modules)\n"
            "    assert not loaded, (cmd, loaded)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("Usage:") == len(commands)


def test_every_error_class_is_an_alphaspec_error():
    """One family: every exception class the package defines derives from AlphaspecError, so the CLI maps each
    to one `error:` line and a library user catches one base (cli/common's Stopped and Terminated, stops from
    outside rather than errors, aside)."""
    import importlib
    import inspect
    import pkgutil

    import alphaspec
    from alphaspec.errors import AlphaspecError

    outside = []
    for info in pkgutil.walk_packages(alphaspec.__path__, "alphaspec."):
        if info.name.endswith("__main__") or info.name.startswith(("alphaspec.maps.callbacks",)):
            continue  # __main__ runs the CLI; the callbacks need transformers
        module = importlib.import_module(info.name)
        outside += [f"{info.name}.{name}" for name, cls in inspect.getmembers(module, inspect.isclass)
                    if cls.__module__ == info.name and issubclass(cls, BaseException)
                    and not issubclass(cls, AlphaspecError) and name not in ("Stopped", "Terminated")]
    assert outside == []


def test_no_private_field_of_torch_is_used():
    """The scheduler's `_last_lr` is never written and the process group's store is reached through the public
    TCPStore, not `distributed_c10d._get_default_store` (private names move between torch releases)."""
    private = ("_last_lr", "_get_default_store", "distributed_c10d", "_LRScheduler")
    import re

    found = [f"{p.relative_to(ROOT)}: {name}" for p in (ROOT / "alphaspec").rglob("*.py")
             for name in private if re.search(rf"\b{name}\b", p.read_text(encoding="utf-8"))]
    assert found == []


def test_the_cli_uses_clicks_documented_api_only():
    """The command line is plain click: no Typer, no private name of click (`click.core._x`, `._click`), no
    hand-built signatures; options reach click through `cls=` and the documented `format_*` methods."""
    import re

    found = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in (ROOT / "alphaspec").rglob("*.py")
             for m in re.finditer(r"\btyper\b|\bclick(\.\w+)*\._\w+|_click\b|__signature__|rich_utils",
                                  p.read_text(encoding="utf-8"))]
    assert found == []
    import click

    from alphaspec.cli import app

    assert isinstance(app, click.Group) and all(isinstance(c, click.Command) for c in app.commands.values())


def test_the_analysis_has_one_bounded_pool():
    """analyze's solver threads and diff's matrix jobs run on analysis.pool.bounded_map: no other analysis module
    makes a thread pool of its own."""
    owners = [str(p.relative_to(ROOT)) for p in (ROOT / "alphaspec" / "analysis").rglob("*.py")
              if "ThreadPoolExecutor" in p.read_text(encoding="utf-8")]
    assert owners == ["alphaspec/analysis/pool.py"]


# The public names of `alphaspec` as released to users' scripts: a name leaves this list only with a CHANGELOG
# line that names it as removed or renamed (so that a script written against an earlier commit can be mended).
PUBLIC = (
    "AlphaDecay", "AlphaLR", "AlphaspecError", "Analysis", "AnalysisOptions", "DecayMap", "DecayMapError",
    "DecaySpec", "ESTIMATORS", "MapSpec", "PowerLawFit", "SourceError", "ValueMap", "__version__", "analyze",
    "analyze_checkpoint", "analyze_many", "assign_decays", "build_decay_map", "build_map", "decay_map",
    "diff_checkpoints", "eigenvalues", "fit", "lora_config", "lr_param_groups", "open_checkpoint", "prune_model")


def test_no_public_name_disappears_without_a_changelog_line():
    """Every name of PUBLIC is still exported and resolves (lazily) to an object; one that is gone must be named in
    a CHANGELOG line that says it was removed or renamed. A new export must be added to PUBLIC (and so reviewed)."""
    import alphaspec

    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8").splitlines()
    gone = [n for n in PUBLIC if n not in alphaspec.__all__]
    unexplained = [n for n in gone if not any(f"`{n}`" in line and ("removed" in line.lower() or "renamed" in line.lower()
                                                                   or "→" in line) for line in changelog)]
    assert unexplained == []
    assert [n for n in alphaspec.__all__ if n not in PUBLIC] == []
    for name in set(PUBLIC) - set(gone):
        assert getattr(alphaspec, name) is not None, name


def test_documented_dotted_paths_work_after_a_bare_import():
    """`import alphaspec` then a dotted path as the docs write it (alphaspec.maps.callbacks.AlphaDecayCallback,
    alphaspec.plots.spectra, alphaspec.sources.checkpoint.example_path), in a fresh interpreter; a name that is
    no module is still an AttributeError."""
    import subprocess
    import sys

    code = ("import alphaspec\n"
            "assert alphaspec.maps.callbacks.AlphaDecayCallback.__name__ == 'AlphaDecayCallback'\n"
            "assert callable(alphaspec.plots.spectra.spectra_figure)\n"
            "assert callable(alphaspec.sources.checkpoint.example_path)\n"
            "try:\n    alphaspec.nothing_here\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit(1)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_no_function_is_over_60_lines():
    """A function a reader takes in at once (docstring included); a longer one is split where its steps are."""
    import ast

    long = [f"{p.relative_to(ROOT)}: {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for p in (ROOT / "alphaspec").rglob("*.py") for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 60]
    assert long == []


def test_benchmarks_time_solves_not_the_eigenvalue_store():
    """A bench script that reads the clock around an analysis turns the store off (or measures the store itself,
    bench/store.py): a second command taking spectra from the store would report a solve that never ran."""
    timed = re.compile(r"perf_counter|time\.time\(\)|date \+%s")
    analyses = re.compile(r"analyze|diff_checkpoints|\"diff\"")
    careless = [p.name for p in sorted((ROOT / "bench").glob("*.[ps][yh]"))
                if timed.search(text := p.read_text()) and analyses.search(text)
                and not re.search(r"ALPHASPEC_NO_CACHE|--no-cache|cache=False", text)]
    assert careless == []
