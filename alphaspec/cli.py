"""The `alphaspec` command line: parses options, calls the Python API, renders with rich."""

from __future__ import annotations

import re
import sys
from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from . import __version__
from .analysis import Analysis, run
from .checkpoint import SourceError, open_checkpoint
from .esd import DeviceError, resolve_device
from .modules import MODULE_TYPES
from .output import TABLE_SUFFIXES, check_output, read_results, read_spectra, write_results, write_spectra

MODEL_KINDS = ("spectra", "alpha-modules", "alpha-depth")  # plots.MODEL_KINDS, without importing matplotlib

app = typer.Typer(
    name="alphaspec",
    help="Heavy-tailed spectral analysis of language-model checkpoints (HT-SR), and AlphaDecay weight decay.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


class Estimator(str, Enum):
    median = "median"
    gof = "gof"
    fix_finger = "fix-finger"


def fail(message: str, code: int = 1) -> None:
    """One `error:` line on stderr and a non-zero exit, never a traceback."""
    err.print(Text(f"error: {message}"), style="bold red", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        out.print(f"alphaspec {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """alphaspec: look inside language-model checkpoints through their weight spectra."""


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} matrices/s" if task.speed else "", style="progress.data.speed")


def _analyse(source: str, estimator: str, device, quiet: bool, **options):
    """run() with a progress bar (matrices done, matrices/s, ETA) on stderr; bad input ends in `error:`."""
    columns = [TextColumn("analysing"), BarColumn(), MofNCompleteColumn(), RateColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn()]
    try:
        with Progress(*columns, console=err, disable=quiet) as bar:
            task = bar.add_task("analyse", total=None)
            return run(source, estimator, device, progress=lambda done, total: bar.update(task, completed=done,
                                                                                         total=total), **options)
    except (SourceError, DeviceError) as e:
        fail(str(e))


def _load(source: str, estimator: str, device: str, quiet: bool, spectra_file: Path | None = None):
    """(table, spectra) from a results file written by `analyze` (spectra from its .npz, when there is one),
    or from a checkpoint analysed now."""
    path = Path(source)
    if path.suffix not in TABLE_SUFFIXES or not path.is_file():
        result = _analyse(source, estimator, device, quiet, keep_spectra=True)
        return result.table, result.spectra
    try:
        npz = spectra_file or path.with_suffix(".npz")
        return read_results(path), (read_spectra(npz) if npz.is_file() else {})
    except (OSError, ValueError, KeyError) as e:
        fail(f"{source}: not a results file written by alphaspec analyze ({e})")


def _regexes(patterns: list[str], option: str) -> list[str]:
    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            raise typer.BadParameter(f"{p!r} is not a valid regular expression ({e})", param_hint=option) from e
    return patterns


def _summary(result: Analysis) -> Table:
    from .reference import random_alpha

    table = Table(title="alpha per module type", title_justify="left", header_style="bold",
                  caption="random: alpha of a Gaussian matrix of the type's most common shape (Marchenko-Pastur); "
                          "trained matrices below it carry learned correlations", caption_justify="left")
    for col in ("module", "count", "fitted", "mean", "median", "min", "max", "random"):
        table.add_column(col, justify="left" if col == "module" else "right")
    df = result.table
    for module in [m for m in MODULE_TYPES if m in set(df["module"])]:
        rows = df[df["module"] == module]
        fitted = rows.dropna(subset=["alpha"])
        stats = [f"{v:.3f}" for v in (fitted["alpha"].mean(), fitted["alpha"].median(), fitted["alpha"].min(),
                                      fitted["alpha"].max())] if len(fitted) else ["-"] * 4
        shape = fitted[["rows", "cols"]].value_counts().idxmax() if len(fitted) else None
        ref = f"{random_alpha(int(shape[0]), int(shape[1]), result.estimator):.3f}" if shape is not None else "-"
        table.add_row(module, str(len(rows)), str(len(fitted)), *stats, ref)
    return table


def _report(result: Analysis, n_tensors: int) -> None:
    df = result.table
    out.print(_summary(result))
    failed = df[df["status"] != "ok"]
    if len(failed):
        out.print(f"[yellow]{len(failed)} matrix fit(s) empty:[/]")
        for _, r in failed.head(10).iterrows():
            out.print(Text(f"  {r['name']}: {r['status']}"))
        if len(failed) > 10:
            out.print(f"  ... and {len(failed) - 10} more (see the status column)")
    if result.skipped:
        reasons = Counter(s.reason for s in result.skipped)
        out.print(f"{len(result.skipped)} tensor(s) skipped:")
        for reason, count in reasons.most_common():
            example = next(s.name for s in result.skipped if s.reason == reason)
            out.print(Text(f"  {count:>5} x {reason}  (e.g. {example})"))
    for note in result.notes:
        out.print(Text(f"note: {note}"), style="yellow")
    out.print(f"{len(df)} matrices analysed, {len(result.skipped)} tensors skipped, {n_tensors} tensors in the checkpoint")


@app.command(no_args_is_help=True, epilog="""
**Examples**

    alphaspec analyze example:minilm                  # the bundled MiniLM checkpoint

    alphaspec analyze ./my-model -o alphas.csv        # HF directory (shards + index are fine)

    alphaspec analyze meta-llama/Llama-2-7b-hf@main -e gof -o llama.json

    alphaspec analyze model.safetensors --include 'layers\\.[0-3]\\.' --exclude 'k_proj'
""")
def analyze(
    source: Annotated[str, typer.Argument(help="A .safetensors/.bin/.pt file, a model or run directory, "
                                          "a hub id org/name[@revision], or example:minilm.")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write the table: .csv, .json or .parquet.")] = None,
    estimator: Annotated[Estimator, typer.Option("-e", "--estimator", help="How xmin is chosen.")] = Estimator.median,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    include: Annotated[list[str] | None, typer.Option(
        "--include", help="Only tensors whose name matches (regex, repeatable).")] = None,
    exclude: Annotated[list[str] | None, typer.Option(
        "--exclude", help="Skip tensors whose name matches (regex, repeatable).")] = None,
    split_fused: Annotated[bool, typer.Option(
        "--split-fused/--no-split-fused", help="Split fused q/k/v and gate/up tensors.")] = True,
    save_spectra: Annotated[Path | None, typer.Option(
        "--save-spectra", help="Also save every eigenvalue spectrum (ascending) to this .npz.")] = None,
    plots: Annotated[Path | None, typer.Option(
        "--plots", help="Also draw the model-level figures (spectra, alpha-modules, alpha-depth) into DIR.")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Concurrent solves (on a GPU, one CUDA stream "
                                         "each).")] = 1,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar and no summary.")] = False,
) -> None:
    """Eigenvalue spectrum and power-law tail fit (alpha) of every weight matrix in a checkpoint."""
    include, exclude = _regexes(include or [], "--include"), _regexes(exclude or [], "--exclude")
    try:
        if output is not None:
            check_output(output)
        if save_spectra is not None and save_spectra.suffix != ".npz":
            raise ValueError(f"{save_spectra}: spectra are saved as .npz")
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    try:
        dev = resolve_device(device)
        ckpt = open_checkpoint(source)
    except (SourceError, DeviceError) as e:
        fail(str(e))
    if not quiet:
        why = " (no CUDA device found)" if device == "auto" and dev.type == "cpu" else ""
        err.print(f"alphaspec {__version__} · {len(ckpt.tensors)} tensors in {len(ckpt.files)} file(s) · "
                  f"device {dev}{why} · estimator {estimator.value}", highlight=False)
    result = _analyse(source, estimator.value, dev, quiet, include=include, exclude=exclude, split_fused=split_fused,
                      keep_spectra=save_spectra is not None or plots is not None, checkpoint=ckpt, workers=workers)
    if output is not None:
        write_results(result, output)
    if save_spectra is not None:
        write_spectra(result, save_spectra)
    drawn = _draw(result.table, result.spectra, plots, list(MODEL_KINDS), "png", []) if plots is not None else []
    if not quiet:
        _report(result, len(ckpt.tensors))
        for path in drawn:
            out.print(f"drew {path}", highlight=False)
        if output is not None:
            out.print(f"wrote {output}", highlight=False)
        else:
            out.print("[dim]save the full table with -o results.csv (or .json, .parquet)[/]")


class Kind(str, Enum):
    spectra = "spectra"
    alpha_modules = "alpha-modules"
    alpha_depth = "alpha-depth"
    esd = "esd"
    decay = "decay"


class Format(str, Enum):
    png = "png"
    svg = "svg"
    pdf = "pdf"


def _draw(table, spectra, out_dir: Path, kinds: list[str], fmt: str, names: list[str], dmap=None) -> list[Path]:
    from .plots import render  # matplotlib is loaded only when figures are asked for

    try:
        return render(table, spectra, out_dir, kinds, fmt, names, dmap)
    except (ValueError, OSError) as e:
        fail(str(e))


@app.command(no_args_is_help=True, epilog="""
**Examples**

    alphaspec plot example:minilm -o figs/

    alphaspec analyze model/ -o r.json --save-spectra r.npz && alphaspec plot r.json -o figs/ --format svg

    alphaspec plot r.json --kind esd --module 'layers\\.3\\.mlp\\.down' -o figs/
""")
def plot(
    source: Annotated[str, typer.Argument(help="A checkpoint (anything `analyze` takes), or a results file "
                                          "(.csv/.json/.parquet) written by `analyze`.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory for the figures.")] = Path("alphaspec-plots"),
    kind: Annotated[list[Kind] | None, typer.Option("--kind", help="Figure kind(s); default: all model-level "
                                                    "kinds, plus esd when --module is given.")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="png (150 dpi), or vector svg / pdf.")] = Format.png,
    module: Annotated[list[str] | None, typer.Option("--module", help="Row name or regex for `esd` figures.")] = None,
    spectra_file: Annotated[Path | None, typer.Option("--spectra", help="Spectra .npz saved by `analyze "
                                                      "--save-spectra` (default: RESULTS with suffix .npz).")] = None,
    decay_map_file: Annotated[Path | None, typer.Option("--decay-map", help="A map from `alphaspec decay-map` for "
                                                        "the decay figure (default: linear, w = 0.1).")] = None,
    estimator: Annotated[Estimator, typer.Option("-e", "--estimator", help="When SOURCE is a checkpoint.")] = Estimator.median,
    device: Annotated[str, typer.Option(help="When SOURCE is a checkpoint: auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Figures: ESDs per module type across layers, alpha per module type and over depth, one matrix's fit,
    and weight decay against alpha."""
    from .decay import DecayMap, DecayMapError

    kinds = [k.value for k in kind] if kind else [*MODEL_KINDS, *(["esd"] if module else []),
                                                   *(["decay"] if decay_map_file else [])]
    dmap = None
    if decay_map_file is not None:
        try:
            dmap = DecayMap.load(decay_map_file)
        except DecayMapError as e:
            fail(str(e))
    table, spectra = _load(source, estimator.value, device, False, spectra_file)
    if not spectra and any(k in ("spectra", "esd") for k in kinds):
        fail(f"{source}: the {' and '.join(k for k in kinds if k in ('spectra', 'esd'))} figures need the "
             f"eigenvalues: run analyze with --save-spectra {Path(source).with_suffix('.npz')} (or pass --spectra)")
    names = []
    if "esd" in kinds:
        if not module:
            fail("the esd figure needs --module NAME (a row name or a regex)")
        names = [n for n in table["name"] if n in module or any(re.search(p, n) for p in module)]
        names = [n for n in names if n in spectra]
        if not names:
            fail(f"no analysed matrix with a spectrum matches --module {' '.join(module)}")
    for path in _draw(table, spectra, output, kinds, fmt.value, names, dmap):
        out.print(f"drew {path}", highlight=False)


class Assign(str, Enum):
    linear = "linear"
    sqrt = "sqrt"
    log2 = "log2"
    sigmoid = "sigmoid"


class Preserve(str, Enum):
    none = "none"
    modules = "modules"
    params = "params"


@app.command("decay-map", no_args_is_help=True, epilog="""
**Examples**

    alphaspec decay-map ./my-llama -o wd.json                       # AdamW-style base decay 0.1

    alphaspec decay-map r.json -o wd.json --weight-decay 5e-6 --ratio 0.67 5 --preserve-mean params

    alphaspec decay-map model/ -o wd.json --assign sigmoid --metric spectral_norm --default-decay matrices
""")
def decay_map(
    source: Annotated[str, typer.Argument(help="A checkpoint (anything `analyze` takes) or a results file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The decay map to write (.json).")],
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0, help="Base decay w (AdamW-style; "
                                                "Adam with L2 uses ~1e-5 to 1e-6).")] = 0.1,
    ratio: Annotated[tuple[float, float], typer.Option("--ratio", help="linear: decays span s1*w .. s2*w.")] = (0.67, 3.0),
    assign: Annotated[Assign, typer.Option("--assign", help="How metric values become decays.")] = Assign.linear,
    estimator: Annotated[Estimator, typer.Option(
        "-e", "--estimator", help="alpha estimator (when analysing).")] = Estimator.median,
    metric: Annotated[str, typer.Option("--metric", help="alpha, alpha_weighted, spectral_norm, frobenius_norm, "
                                        "stable_rank, log_spectral_norm, log_norm, entropy or lambda_max.")] = "alpha",
    preserve_mean: Annotated[Preserve, typer.Option("--preserve-mean", help="Rescale so the plain (modules) or "
                                                    "parameter-weighted (params) mean decay is w.")] = Preserve.none,
    default_decay: Annotated[str, typer.Option("--default-decay", help="Untuned parameters: all (w), matrices (w, but "
                                               "0 for 1-D and embeddings) or a number.")] = "all",
    include: Annotated[list[str] | None, typer.Option("--include", help="Tune the tensors matching (regex) instead of "
                                                      "the block matrices.")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Do not tune tensors matching (regex).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N (when analysing).")] = "auto",
    quiet: Annotated[bool, typer.Option("-q", "--quiet")] = False,
) -> None:
    """AlphaDecay module-wise weight decays from the spectra, as a JSON map for any training loop."""
    from .decay import METRICS, DecayMapError, build_decay_map

    include, exclude = _regexes(include or [], "--include"), _regexes(exclude or [], "--exclude")
    if metric not in METRICS:
        raise typer.BadParameter(f"{metric!r}; choose one of {', '.join(METRICS)}", param_hint="--metric")
    if output.suffix != ".json":
        raise typer.BadParameter(f"{output}: decay maps are JSON", param_hint="-o")
    try:
        default: str | float = default_decay if default_decay in ("all", "matrices") else float(default_decay)
    except ValueError as e:
        raise typer.BadParameter(f"{default_decay!r}: use all, matrices or a number", param_hint="--default-decay") from e
    table, _ = _load(source, estimator.value, device, quiet)
    try:
        dmap = build_decay_map(table, weight_decay, ratio=ratio, assign=assign.value, metric=metric,
                               preserve_mean=preserve_mean.value, default=default, include=include, exclude=exclude,
                               source=source)
    except DecayMapError as e:
        fail(str(e))
    dmap.save(output)
    if not quiet:
        out.print(_decay_summary(dmap))
        out.print(f"wrote {output} ({len(dmap.modules)} tuned tensors)", highlight=False)


def _decay_summary(dmap) -> Table:
    mods = pd.DataFrame(dmap.modules)
    table = Table(title=f"{dmap.assign} decays from {dmap.metric} (base w = {dmap.weight_decay:g})", title_justify="left",
                  header_style="bold")
    for col in ("module", "count", f"mean {dmap.metric}", "mean decay", "mean / w"):
        table.add_column(col, justify="left" if col == "module" else "right")
    for module, part in mods.groupby("module", sort=False):
        mean_wd = part["weight_decay"].mean()
        table.add_row(str(module), str(len(part)), f"{part[dmap.metric].mean():.3f}", f"{mean_wd:.3g}",
                      f"{mean_wd / dmap.weight_decay:.2f}" if dmap.weight_decay else "-")
    mean_wd = mods["weight_decay"].mean()
    ratio = f"{mean_wd / dmap.weight_decay:.2f}" if dmap.weight_decay else "-"
    table.add_row("all tuned", str(len(mods)), f"{mods[dmap.metric].mean():.3f}", f"{mean_wd:.3g}", ratio,
                  style="bold")
    weighted = float((mods["weight_decay"] * mods["params"]).sum() / mods["params"].sum())
    ratio = f"{weighted / dmap.weight_decay:.2f}" if dmap.weight_decay else "-"
    table.add_row("parameter-weighted", "", "", f"{weighted:.3g}", ratio, style="bold")
    table.caption = ("mean / w above 1 means the map regularises more than uniform decay at w "
                     "(see --preserve-mean)") if dmap.preserve_mean == "none" else f"mean preserved: {dmap.preserve_mean}"
    return table


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
