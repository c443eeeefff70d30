"""`alphaspec compare`: training runs side by side, seeds pooled, each strategy against the baseline."""

from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

from alphaspec.cli.common import app, fail, out, quiet_option
from alphaspec.cli.help import PATH, argument, option, with_options

OPTIONS = [
    argument("runs", nargs=-1, required=True, type=PATH, help="Run directories written by `alphaspec train`."),
    option("-o", "--output", type=PATH, help="Per-run table (.csv, .json, .parquet)."),
    option("--plot", type=PATH, help="Loss curves and applied decay (.png, .svg, .pdf)."),
    option("--baseline", help="Label to compare against (default: the uniform runs)."),
    option("--plot-alphas", type=PATH, help="Alpha over training per module type, labels overlaid (.png, .svg, "
           ".pdf); needs the runs' alphas.csv."),
    option("--plot-multipliers", type=PATH, help="Learned multipliers against model width, for runs with learnable "
           "multipliers (.png, .svg, .pdf)."),
    quiet_option,
]


@app.command(no_args_is_help=True, epilog="""
Examples:

    alphaspec compare runs/uniform runs/alphadecay runs/awd

    # seeds of a setting are pooled
    alphaspec compare runs/*/ -o comparison.csv --plot comparison.png

    alphaspec compare runs/*/ --baseline "uniform"
""")
@with_options(OPTIONS)
def compare(runs: tuple[Path, ...], output: Path | None, plot: Path | None, baseline: str | None,
            plot_alphas: Path | None, plot_multipliers: Path | None, quiet: bool) -> None:
    """Judge weight-decay strategies: final and best validation loss, seeds pooled, against a baseline."""
    from alphaspec.analysis.table import write_table
    from alphaspec.files import check_output
    from alphaspec.train.compare import compare as compare_runs

    if output is not None:
        check_output(output, inputs=list(runs))
    for figure in filter(None, (plot, plot_alphas, plot_multipliers)):
        check_output(figure, (".png", ".svg", ".pdf"), inputs=list(runs))
    result = compare_runs(list(runs), baseline)
    if output is not None:
        write_table(result.table, output)
    if plot is not None:
        from alphaspec.plots.style import save_figure
        from alphaspec.plots.training import compare_figure

        save_figure(compare_figure(result), plot)
    if plot_alphas is not None:
        _alphas_over_training(result, plot_alphas)
    if plot_multipliers is not None:
        _multipliers_by_width(result, plot_multipliers)
    if quiet:
        return
    out.print(_summary(result.summary))
    for note in result.notes:
        out.print(f"[yellow]note:[/] {note}", highlight=False)
    if result.differing:
        out.print(f"[yellow]note:[/] the runs differ in {', '.join(result.differing)}: not a like-for-like comparison")
    base = result.summary.set_index("label").loc[result.summary.attrs["baseline"], "applied_over_w"]
    uneven = result.summary[(result.summary["applied_over_w"] - base).abs() > 0.1 * base]
    if len(uneven) and not math.isnan(base):
        out.print("[yellow]note:[/] average decay differs from the baseline's for "
                  f"{', '.join(uneven['label'])}: gains may come from more (or less) regularisation; "
                  "compare at equal average decay with --preserve-mean params")
    for path in filter(None, (output, plot, plot_alphas, plot_multipliers)):
        out.print(f"wrote {path}", highlight=False)


def _multipliers_by_width(result, path: Path) -> None:
    """The width-scaling figure from the runs that learned multipliers (width from each run's config.json)."""
    from alphaspec.plots.style import save_figure
    from alphaspec.plots.training import multipliers_width_figure
    from alphaspec.train.rundir import has_log, read_log

    runs = [(row.label, _width(run.path / "config.json"), read_log(run.path, "multipliers", "--plot-multipliers"))
            for run, row in zip(result.runs, result.table.itertuples(), strict=True) if has_log(run.path, "multipliers")]
    if not runs:
        fail("--plot-multipliers: none of the runs learned multipliers (--strategy lrm or --multipliers)")
    save_figure(multipliers_width_figure(runs), path)


def _alphas_over_training(result, path: Path) -> None:
    """The alpha-over-training overlay from the runs that analysed their matrices (alphas.csv)."""
    from alphaspec.plots.style import save_figure
    from alphaspec.plots.training import alphas_over_training
    from alphaspec.train.rundir import has_log, read_log

    alphas = [read_log(run.path, "alphas", "--plot-alphas") if has_log(run.path, "alphas") else None
              for run in result.runs]
    if all(a is None for a in alphas):
        fail("--plot-alphas: none of the runs recorded alphas.csv (train with --analyze-every N)")
    save_figure(alphas_over_training(result, alphas), path)


def _width(config: Path) -> int:
    """A run's model width, from the config.json its weights were saved with."""
    from alphaspec.errors import first_line, parse_json

    try:
        width = parse_json(config.read_text(encoding="utf-8"))["hidden_size"]
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"hidden_size {width!r} is not a positive integer")
        return width
    except (OSError, ValueError, KeyError, TypeError) as e:
        fail(f"{config}: not the model config of a run ({first_line(e)})")


def _summary(summary) -> Table:
    """The terminal table (80 columns): final (mean, sd over seeds) and best eval loss, the difference in final
    eval loss to the baseline ± the half-width of its 95 % interval, the Holm-adjusted p-value, the decay
    applied. Throughput is left out: it measures the machine's load as much as the strategy (per run in -o)."""
    baseline = summary.attrs["baseline"]
    table = Table(title=f"validation loss, best first (baseline: {baseline})", title_justify="left",
                  header_style="bold")
    for col in ("label", "n", "final", "sd", "best", "Δ final ±95%", "p Holm", "wd/w"):
        table.add_column(col, justify="left" if col == "label" else "right", no_wrap=col != "label",
                         overflow="fold" if col == "label" else "ellipsis")  # a label is read whole, over lines
    for r in summary.itertuples():
        table.add_row(r.label, str(r.n), _number(r.eval_loss), _number(r.eval_loss_std) if r.n > 1 else "-",
                      _number(r.best_eval_loss), _delta(r, baseline), _p(r.p_holm), _number(r.applied_over_w, 2),
                      style="bold" if r.Index == 0 else None)
    paired = summary.loc[summary["label"] != baseline, "paired"]
    how = "paired by seed (t-test)" if len(paired) and paired.all() else "Welch's t-test where not paired by seed"
    table.caption = (f"Δ final: this label's final eval loss minus the baseline's, {how}, ± the half-width of its "
                     "95 % interval; negative is better. p: two-sided, Holm-adjusted over the labels")
    return table


def _number(x: float, digits: int = 4) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def _delta(r, baseline: str) -> str:
    if r.label == baseline:
        return "-"
    if math.isnan(r.vs_baseline):
        return "- (no eval)"
    if math.isnan(r.ci_low):
        return f"{r.vs_baseline:+.4f} (no CI)"
    return f"{r.vs_baseline:+.4f} ±{(r.ci_high - r.ci_low) / 2:.4f}"


def _p(p: float) -> str:
    return "-" if math.isnan(p) else "<1e-4" if p < 1e-4 else f"{p:.2g}"
