"""`alphaspec plot`: figures from a checkpoint or from a results file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from alphaspec.choices import FIGURES, FORMATS, MODEL_FIGURES
from alphaspec.cli.common import (
    Device,
    Estimator,
    EstimatorOption,
    Quiet,
    app,
    choice_enum,
    draw,
    err,
    fail,
    given,
    load,
    out,
    regexes,
    report_figures,
)

Kind = choice_enum("Kind", FIGURES)
Format = choice_enum("Format", FORMATS)


@app.command(no_args_is_help=True, epilog="""
**Examples**

    alphaspec plot example:minilm -o figs/

    alphaspec analyze model/ -o r.json --save-spectra r.npz
    alphaspec plot r.json -o figs/ --format svg

    # one matrix's spectrum and fit
    alphaspec plot r.json --kind esd --module 'layers\\.3\\.mlp\\.down' -o figs/

    # alpha over the steps of a training run
    alphaspec plot runs/alphadecay --kind training -o figs/

    # a map from `alphaspec map`
    alphaspec plot r.json --map sparsity.json --kind map -o figs/
""")
def plot(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="A checkpoint (anything `analyze` takes), a results file "
                                          "(.csv/.json/.parquet) written by `analyze`, or a training run.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory for the figures.")] = Path("alphaspec-plots"),
    kind: Annotated[list[Kind] | None, typer.Option("--kind", help="Figure kind(s); default: all model-level "
                                                    "kinds, or only esd when --module is given.")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="png (150 dpi), or vector svg / pdf.")] = Format.png,
    module: Annotated[list[str] | None, typer.Option("--module", help="Row name or regex for `esd` figures.")] = None,
    spectra_file: Annotated[Path | None, typer.Option("--spectra", help="Spectra .npz saved by `analyze "
                                                      "--save-spectra` (default: RESULTS with suffix .npz).")] = None,
    decay_map_file: Annotated[Path | None, typer.Option("--decay-map", help="A map from `alphaspec decay-map` for "
                                                        "the decay figure (default: linear, w = 0.1).")] = None,
    map_file: Annotated[Path | None, typer.Option("--map", help="A map from `alphaspec map` (lr, sparsity, "
                                                  "lora_rank) for the map figure.")] = None,
    estimator: EstimatorOption = Estimator.median,
    alpha_excess: Annotated[bool, typer.Option("--alpha-excess", help="alpha-depth: draw alpha - alpha_random (what "
                                               "training added beyond a Gaussian matrix of the same shape).")] = False,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Figures: ESDs per module type across layers, alpha per module type and over depth, one matrix's fit,
    weight decay against alpha, and a learning-rate, sparsity or LoRA-rank map against alpha."""
    from alphaspec.files import check_output_dir
    from alphaspec.maps.file import DecayMap, ValueMap
    from alphaspec.train.rundir import has_log

    check_output_dir(output)
    run = Path(source)
    kinds = [k.value for k in kind] if kind else ["esd"] if module else [
        *MODEL_FIGURES, *(["decay"] if decay_map_file else []), *(["map"] if map_file else []),
        *(["training"] if has_log(run, "alphas") else []),
        *(["multipliers"] if has_log(run, "multipliers") else [])]
    for figure, draw_run in (("training", _training_figure), ("multipliers", _multipliers_figure)):
        if figure in kinds:  # figures of a training run, from its logs
            drawn = draw_run(run, output, fmt.value)
            if not quiet:
                out.print(f"drew {drawn}", highlight=False)
            kinds.remove(figure)
    if not kinds:
        return
    if "esd" in kinds and not module:
        fail("the esd figure needs --module NAME (a row name or a regex)", 2)
    dmap = DecayMap.load(decay_map_file) if decay_map_file is not None else None
    vmap = ValueMap.load(map_file) if map_file is not None else None
    if "map" in kinds and vmap is None and has_log(run, "lrs"):  # a tempbalance/llr run: the LRs it applied last
        vmap = _run_lr_map(run)
    if "map" in kinds and vmap is None:
        fail("the map figure needs --map FILE (a map from `alphaspec map`, or a tempbalance/llr run)", 2)
    if dmap is None and "decay" in kinds and has_log(run, "decays"):  # a run: the decays it last applied
        dmap = _run_decay_map(run)
    table, spectra = load(source, estimator.value, device, quiet, spectra_file, asked="-e" if given(ctx, "estimator") else None)
    from alphaspec.maps.alphadecay import check_map_matches_table

    for chosen, figure in ((dmap if decay_map_file is not None else None, "decay"), (vmap, "map")):
        if chosen is not None and figure in kinds:
            check_map_matches_table(chosen, table, source)
    note = None
    if dmap is None and "decay" in kinds:
        dmap, note = _default_map(table)
        if dmap is None:
            kinds.remove("decay")
    names = _esd_names(source, table, spectra, module) if "esd" in kinds else []
    rendered = draw(table, spectra, output, kinds, fmt.value, names, dmap, alpha_excess, vmap)
    if note and dmap is None:
        rendered.skipped.append(note)
    elif note and not quiet:
        out.print(note, highlight=False)
    report_figures(rendered, quiet)


def _esd_names(source: str, table, spectra: dict, module: list[str]) -> list[str]:
    """The analysed matrices --module names (exactly or as a regex) that have saved eigenvalues."""
    patterns = regexes([m for m in module if m not in set(table["name"])], "--module")
    names = [n for n in table["name"] if n in module or any(re.search(p, n) for p in patterns)]
    if not names:
        fail(f"no analysed matrix matches --module {' '.join(module)}")
    if not spectra:
        fail(f"{source}: the esd figure needs the eigenvalues: run analyze with --save-spectra "
             f"{Path(source).with_suffix('.npz')} (or pass --spectra)")
    return [n for n in names if n in spectra]


def _default_map(table):
    """The decay figure without --decay-map: AlphaDecay's defaults at w = 0.1, said so; or why there is none."""
    from alphaspec.maps.alphadecay import build_decay_map
    from alphaspec.maps.spec import DecayMapError

    try:
        return build_decay_map(table, 0.1), "decay figure: the default map (linear, w = 0.1); pass --decay-map for yours"
    except DecayMapError as e:
        return None, f"decay: {e}"


def _run_decay_map(run: Path):
    """The decays a training run applied last (its decay.csv), as a map the decay figure draws against the
    metric they came from."""
    from alphaspec.maps.file import DecayMap
    from alphaspec.train.rundir import read_log

    decays = read_log(run, "decays", "the decay figure")
    decays = decays[decays["name"] != "*"]  # AWD's one global row per step has no matrix to place
    if decays.empty:
        fail(f"{run}: decay.csv has no per-matrix decays to draw (the run's strategy sets one global decay)")
    latest, config, metric = _last_refresh(run, decays)
    modules = [{"name": r.name, "module": r.module, "layer": r.layer, metric: r.metric,
                "weight_decay": r.weight_decay} for r in latest.itertuples()]
    return DecayMap(modules=modules, weight_decay=float(config.get("weight_decay", latest["weight_decay"].mean())),
                    ratio=tuple(config.get("ratio") or (0.67, 5.0)), assign=str(config.get("assign") or "linear"),
                    estimator=str(config.get("estimator") or "median"), metric=metric,
                    preserve_mean=str(config.get("preserve_mean") or "none"),
                    source=f"{run} (decay.csv, step {int(latest['step'].max())})")


def _last_refresh(run: Path, rows):
    """Each matrix's latest row of a run's decay.csv or lr.csv, the run's settings and the metric behind them."""
    from alphaspec.train.rundir import load_run_json

    config = load_run_json(run).get("config", {})
    latest = rows.sort_values("step", kind="stable").groupby("name", sort=False).tail(1)
    return latest, config, str(config.get("metric") or "alpha")


def _run_lr_map(run: Path):
    """The learning-rate multipliers a tempbalance or llr run reached at its last refresh (its lr.csv), as a
    map the map figure draws against the metric they came from."""
    from alphaspec.maps.file import ValueMap
    from alphaspec.train.rundir import read_log

    latest, config, metric = _last_refresh(run, read_log(run, "lrs", "the map figure"))  # no rows: one error line
    modules = [{"name": r.name, "module": r.module, "layer": r.layer, metric: r.metric, "lr_scale": r.lr_scale}
               for r in latest.itertuples()]
    return ValueMap(kind="lr", method=str(config.get("strategy") or "tempbalance"), modules=modules, metric=metric,
                    estimator=str(config.get("estimator") or "median"),
                    source=f"{run} (lr.csv, step {int(latest['step'].max())})")


def _training_figure(run: Path, output: Path, fmt: str) -> Path:
    from alphaspec.plots.style import save_figure
    from alphaspec.plots.training import alphas_figure
    from alphaspec.train.rundir import load_run_json, read_log

    alphas = read_log(run, "alphas", "the training figure")
    estimator = load_run_json(run).get("config", {}).get("estimator", "median")
    output.mkdir(parents=True, exist_ok=True)
    return save_figure(alphas_figure(alphas, str(estimator)), output / f"training.{fmt}")


def _multipliers_figure(run: Path, output: Path, fmt: str) -> Path:
    from alphaspec.plots.style import save_figure
    from alphaspec.plots.training import multipliers_figure
    from alphaspec.train.model import is_multiplier
    from alphaspec.train.rundir import load_checkpoint, read_log

    history = read_log(run, "multipliers", "the multipliers figure (a run with learnable multipliers: --strategy lrm or "
                       "--multipliers)")
    _, state = load_checkpoint(run, lambda line: err.print(f"warning: {line}", style="yellow", highlight=False))
    final = {n: t.float().numpy() for n, t in state["model"].items() if is_multiplier(n)}
    output.mkdir(parents=True, exist_ok=True)
    return save_figure(multipliers_figure(history, final), output / f"multipliers.{fmt}")
