"""`alphaspec plot`: figures from a checkpoint or from a results file."""

from __future__ import annotations

import re
from pathlib import Path

import click

from alphaspec.choices import FIGURES, FORMATS, MANY_FIGURES, MODEL_FIGURES
from alphaspec.cli.common import (
    app,
    cache_option,
    device_option,
    draw,
    err,
    estimator_option,
    fail,
    given,
    load,
    out,
    quiet_option,
    regexes,
    report_figures,
)
from alphaspec.cli.help import PATH, argument, option, with_options

OPTIONS = [
    argument("source", help="A checkpoint (anything `analyze` takes), a results file (.csv/.json/.parquet) written "
             "by `analyze`, or a training run."),
    option("-o", "--output", type=PATH, default=Path("alphaspec-plots"), help="Directory for the figures."),
    option("--kind", type=click.Choice(FIGURES), multiple=True, metavar_="KIND", help="Figure kind(s): "
           + ", ".join(FIGURES) + "; default: all model-level kinds, only esd when --module is given, series for a "
           "long table of several sources."),
    option("--format", "fmt", type=click.Choice(FORMATS), default=FORMATS[0], help="png (150 dpi), or vector svg / "
           "pdf."),
    option("--module", multiple=True, help="Row name or regex for `esd` figures."),
    option("--spectra", "spectra_file", type=PATH, help="Spectra .npz saved by `analyze --save-spectra` (default: "
           "RESULTS with suffix .npz)."),
    option("--decay-map", "decay_map_file", type=PATH, help="A map from `alphaspec decay-map` for the decay figure "
           "(default: linear, w = 0.1)."),
    option("--map", "map_file", type=PATH, help="A map from `alphaspec map` (lr, sparsity, lora_rank) for the map "
           "figure."),
    estimator_option,
    option("--scores", type=PATH, help="zoo: a CSV of source,score, one quality number per model of the long "
           "table."),
    option("--alpha-excess", is_flag=True, help="alpha-depth: draw alpha - alpha_random (what training added beyond "
           "a Gaussian matrix of the same shape)."),
    device_option,
    cache_option,
    quiet_option,
]


@app.command(no_args_is_help=True, epilog="""
Examples:

    alphaspec plot example:minilm -o figs/

    alphaspec analyze model/ -o r.json --save-spectra r.npz
    alphaspec plot r.json -o figs/ --format svg

    # one matrix's spectrum and fit
    alphaspec plot r.json --kind esd --module 'layers\\.3\\.mlp\\.down' -o figs/

    # alpha over the steps of a training run
    alphaspec plot runs/alphadecay --kind training -o figs/

    # a map from `alphaspec map`
    alphaspec plot r.json --map sparsity.json --kind map -o figs/

    # many checkpoints: alpha over steps; models against a score
    alphaspec plot series.csv --kind series -o figs/
    alphaspec plot zoo.csv --kind zoo --scores scores.csv -o figs/
""")
@with_options(OPTIONS)
@click.pass_context
def plot(ctx: click.Context, source: str, output: Path, kind: tuple[str, ...], fmt: str, module: tuple[str, ...],
         spectra_file: Path | None, decay_map_file: Path | None, map_file: Path | None, estimator: str,
         scores: Path | None, alpha_excess: bool, device: str, cache: bool, quiet: bool) -> None:
    """Figures: ESDs per module type across layers, alpha per module type and over depth, one matrix's fit,
    weight decay against alpha, and a learning-rate, sparsity or LoRA-rank map against alpha."""
    from alphaspec.analysis.results import long_table
    from alphaspec.files import check_output_dir
    from alphaspec.train.rundir import has_log

    check_output_dir(output)
    run = Path(source)
    if (long := long_table(source)) is not None or set(kind) & set(MANY_FIGURES):
        return _many_figures(source, long, output, list(kind), fmt, scores, quiet)
    kinds = list(kind) if kind else ["esd"] if module else [
        *MODEL_FIGURES, *(["decay"] if decay_map_file else []), *(["map"] if map_file else []),
        *(["training"] if has_log(run, "alphas") else []),
        *(["multipliers"] if has_log(run, "multipliers") else [])]
    kinds = _run_figures(run, output, kinds, fmt, quiet)
    if not kinds:
        return
    if "esd" in kinds and not module:
        fail("the esd figure needs --module NAME (a row name or a regex)", 2)
    dmap, vmap = _maps(run, kinds, decay_map_file, map_file)
    table, spectra = load(source, estimator, device, quiet, spectra_file, asked="-e" if given(ctx, "estimator") else None,
                          cache=cache)
    from alphaspec.maps.alphadecay import check_map_matches_table

    for chosen, figure in ((dmap if decay_map_file is not None else None, "decay"), (vmap, "map")):
        if chosen is not None and figure in kinds:
            check_map_matches_table(chosen, table, source)
    note = None
    if dmap is None and "decay" in kinds:
        dmap, note = _default_map(table)
        if dmap is None:
            kinds.remove("decay")
    names = _esd_names(source, table, spectra, list(module)) if "esd" in kinds else []
    rendered = draw(table, spectra, output, kinds, fmt, names, dmap, alpha_excess, vmap)
    if note and dmap is None:
        rendered.skipped.append(note)
    elif note and not quiet:
        out.print(note, highlight=False)
    report_figures(rendered, quiet)


def _run_figures(run: Path, output: Path, kinds: list[str], fmt: str, quiet: bool) -> list[str]:
    """Draw the figures of a training run's logs that `kinds` asks for; the kinds left to draw from a table."""
    from alphaspec.plots.training import run_alphas_figure, run_multipliers_figure

    def multipliers(run: Path, output: Path, fmt: str) -> Path:
        return run_multipliers_figure(run, output, fmt, lambda line: err.print(f"warning: {line}", style="yellow",
                                                                                highlight=False))

    for figure, draw_run in (("training", run_alphas_figure), ("multipliers", multipliers)):
        if figure in kinds:
            drawn = draw_run(run, output, fmt)
            if not quiet:
                out.print(f"drew {drawn}", highlight=False)
    return [k for k in kinds if k not in ("training", "multipliers")]


def _maps(run: Path, kinds: list[str], decay_map_file: Path | None, map_file: Path | None):
    """The decay map and the value map the figures draw: the files given, or what a training run applied last."""
    from alphaspec.maps.file import DecayMap, ValueMap
    from alphaspec.train.applied import applied_decay_map, applied_lr_map
    from alphaspec.train.rundir import has_log

    dmap = DecayMap.load(decay_map_file) if decay_map_file is not None else None
    vmap = ValueMap.load(map_file) if map_file is not None else None
    if "map" in kinds and vmap is None and has_log(run, "lrs"):  # a tempbalance/llr run: the LRs it applied last
        vmap = applied_lr_map(run)
    if "map" in kinds and vmap is None:
        fail("the map figure needs --map FILE (a map from `alphaspec map`, or a tempbalance/llr run)", 2)
    if dmap is None and "decay" in kinds and has_log(run, "decays"):  # a run: the decays it last applied
        dmap = applied_decay_map(run)
    return dmap, vmap


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


def _many_figures(source: str, table, output: Path, kinds: list[str], fmt: str, scores: Path | None,
                  quiet: bool) -> None:
    """series and zoo from a long table (None: SOURCE is none); any other kind asked of one is a usage error."""
    from alphaspec.analysis.results import is_results_file
    from alphaspec.analysis.summary import correlate, read_scores, summarize
    from alphaspec.plots.series import series_figure, zoo_figure
    from alphaspec.plots.style import save_figure

    if not is_results_file(source):
        fail(f"{source}: --kind {'/'.join(k for k in kinds if k in MANY_FIGURES)} draws a long table of several "
             "sources (analyze A B ... -o TABLE)", 2)
    if table is None or table["source"].nunique() < 2:
        fail(f"{source}: a table of one source; series and zoo draw several (analyze A B ... -o TABLE)", 2)
    kinds = kinds or ["series", *(["zoo"] if scores is not None else [])]
    if other := [k for k in kinds if k not in MANY_FIGURES]:
        fail(f"{source}: a long table of {table['source'].nunique()} sources draws series and zoo, not {other[0]} "
             "(analyse one source for it)", 2)
    if "zoo" in kinds and scores is None:
        fail("--kind zoo needs --scores FILE (a CSV of source,score)", 2)
    summary = summarize(table)
    given = read_scores(scores, list(dict.fromkeys(table["source"]))) if scores is not None else {}
    correlations = correlate(summary, given)[0] if given else None
    output.mkdir(parents=True, exist_ok=True)
    for figure in kinds:
        path = output / f"{figure}.{fmt}"
        save_figure(series_figure(table) if figure == "series" else zoo_figure(summary, given, correlations), path)
        if not quiet:
            out.print(f"drew {path}", highlight=False)
