"""`alphaspec analyze`: the table of spectra and fits, and its terminal summary."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table
from rich.text import Text

from alphaspec._version import __version__
from alphaspec.choices import ESD_PRECISIONS, MODEL_FIGURES
from alphaspec.cli.common import (
    analyze_with_progress,
    app,
    cache_option,
    device_option,
    draw,
    estimator_option,
    exclude_option,
    finite,
    include_option,
    out,
    quiet_option,
    report_figures,
)
from alphaspec.cli.help import PATH, argument, option, with_options
from alphaspec.cli.many import is_many, run_many
from alphaspec.cli.verdicts import check_verdicts, needs_attention
from alphaspec.errors import UsageError
from alphaspec.spectra.verdicts import PERMUTATIONS, UNCHANGED, WARNINGS, WEIGHTS, Thresholds, parse_fail_on, verdicts

if TYPE_CHECKING:
    import pandas as pd

    from alphaspec.analysis.solve import Analysis


def _summary(result: Analysis) -> Table:
    from alphaspec.sources.matrices import MODULE_TYPES
    from alphaspec.spectra.gaussian import random_alpha

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


def _update_summary(df: pd.DataFrame) -> Table:
    """Updates (a delta, an adapter) by module type: what a low-rank update can show, its rank and size, and
    with the base its change relative to the weights and the strongest directions it kept."""
    from alphaspec.sources.matrices import MODULE_TYPES

    compared = "subspace_overlap" in df
    table = Table(title="what changed, per module type", title_justify="left", header_style="bold",
                  caption="rank: median numerical rank of the changed matrices; rel: ‖ΔW‖/‖W‖ (median, max); "
                          "overlap: the least share of W's top-8 input directions kept" if compared else
                          "rank: median numerical rank of the changed matrices; give --base for the change "
                          "relative to the weights and the directions kept", caption_justify="left")
    cols = ["module", "count", "changed", "rank", "‖ΔW‖ med"] + (["rel med", "rel max", "overlap"] if compared else [])
    for col in cols:
        table.add_column(col, justify="left" if col == "module" else "right")
    for module in [m for m in MODULE_TYPES if m in set(df["module"])]:
        rows = df[df["module"] == module]
        changed = rows[rows["status"] != UNCHANGED]
        rank = (changed["n_eigs"] - changed["n_zero"]).median()
        cells = [f"{rank:.0f}" if len(changed) else "-", f"{changed['frobenius_norm'].median():.3g}" if len(changed)
                 else "-"]
        if compared:
            cells += [f"{rows['rel_change'].median():.3g}", f"{rows['rel_change'].max():.3g}",
                      f"{rows['subspace_overlap'].min():.3f}"]
        table.add_row(module, str(len(rows)), str(len(changed)), *cells)
    return table


def _report(result: Analysis) -> None:
    df = result.table
    updates = "content" in df and (df["content"] != WEIGHTS).any()
    out.print(_update_summary(df) if updates else _summary(result))
    unchanged = df[df["status"] == UNCHANGED]
    if len(unchanged):
        out.print(f"{len(unchanged)} of {len(df)} matrices unchanged (an all-zero update)", highlight=False)
    failed = df[~df["status"].isin(["ok", UNCHANGED])]
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
    needs_attention(df)
    out.print(f"{len(df)} matrices analysed, {len(result.skipped)} tensors skipped, {result.n_tensors} tensors in the checkpoint")


# -- analyze's options, each declared once ------------------------------------------------------------------------
SOURCE_HELP = ("A .safetensors/.bin/.pt/.gguf file, a model or run directory, a hub id org/name[@revision] "
               "(org/name:Q4_K_M for a GGUF quantisation), or example:minilm.")
OPTIONS = [
    argument("sources", nargs=-1, required=True, metavar="SOURCE...", help=SOURCE_HELP + " Several (or a glob, a "
             "@FILE list, RUN/checkpoints): one long table with source, step and tokens columns."),
    option("-o", "--output", type=PATH, help="Write the table: .csv, .json or .parquet."),
    estimator_option,
    device_option,
    include_option,
    exclude_option,
    option("--split-fused/--no-split-fused", default=True, help="Split fused q/k/v and gate/up tensors."),
    option("--save-spectra", type=PATH, help="Also save every eigenvalue spectrum (ascending) to this .npz."),
    option("--plots", type=PATH, metavar_="DIR", help="Also draw the model-level figures (spectra, alpha-modules, "
           "alpha-depth) into DIR."),
    option("--workers", type=click.IntRange(min=0), default=0, help="Concurrent solves (on a GPU, one CUDA stream "
           "each). 0: one per core on the CPU, each single-threaded (faster than one solve threaded over all cores), "
           "1 on a GPU."),
    option("--farms", is_flag=True, help="Also an alpha_farms column: FARMS, the pooled spectrum of square windows, "
           "free of the shape effect (docs/estimators.md)."),
    option("--precision", type=click.Choice(ESD_PRECISIONS), default=ESD_PRECISIONS[0], help="fp64, or fp32 for the "
           "Gram product and eigen-solve: faster on GPUs, for the largest models; alpha error measured in "
           "docs/analyze.md."),
    option("--randomize", is_flag=True, help="Also look for correlation traps: each matrix solved again with its "
           "entries permuted (docs/analyze.md)."),
    option("--permutations", type=click.IntRange(1, 100), default=PERMUTATIONS, help="--randomize: the most "
           "permutations of a matrix near a spike (more until its verdict is sure)."),
    option("--seed", type=click.IntRange(min=0), default=0, help="Seed of the --randomize permutations."),
    option("--over-trained", type=float, default=Thresholds.over_trained, callback=finite,
           help=Thresholds.help("over_trained")),
    option("--under-trained", type=float, default=Thresholds.under_trained, callback=finite,
           help=Thresholds.help("under_trained")),
    option("--rank-loss", type=float, default=Thresholds.rank_loss, callback=finite, help=Thresholds.help("rank_loss")),
    option("--base", metavar_="BASE", help="Analyse W - W_base, matched by name (the fine-tuning update); with an "
           "adapter directory as SOURCE, the base it was trained on."),
    option("--merge", is_flag=True, help="With a LoRA adapter and --base: analyse the merged model "
           "W_base + (lora_alpha/r)·B·A."),
    option("--fail-on", metavar_="WARNING[,...]", help="Exit with status 3 when a matrix has one of these verdicts: "
           + ", ".join(WARNINGS) + "."),
    option("--summary", type=PATH, help="Several sources: also write a summary per source and module type "
           "(.csv, .json or .parquet): alpha, the norm metrics, verdict counts."),
    option("--scores", type=PATH, help="Several sources: a CSV of source,score (a quality per model: a benchmark "
           "score, a validation loss); adds each summary metric's rank correlation with it."),
    option("--steps", metavar_="N,N,...", help="Several sources: their training steps, in order (default: read from "
           "their names, such as step143000, checkpoint-5000, RUN@500)."),
    option("--dry-run", is_flag=True, help="Read the headers only: list the matrices that would be analysed, "
           "what is skipped and why, and estimate the time and memory on this device (with -o, the list)."),
    cache_option,
    quiet_option,
]


@app.command(no_args_is_help=True, epilog="""
Examples:

    # the bundled MiniLM checkpoint
    alphaspec analyze example:minilm

    # a Hugging Face directory (shards and their index are fine)
    alphaspec analyze ./my-model -o alphas.csv

    # a hub id at a revision, with the goodness-of-fit estimator
    alphaspec analyze meta-llama/Llama-2-7b-hf@main -e gof -o llama.json

    # a GGUF file (pip install 'alphaspec[gguf]')
    alphaspec analyze Qwen2.5-7B-Instruct-Q4_K_M.gguf -o qwen.csv

    # over 8 GPUs
    torchrun --nproc-per-node 8 -m alphaspec analyze ./Llama-3.1-405B \\
        -o l405.parquet

    # many checkpoints, one long table: a run's saves, hub revisions, a zoo
    alphaspec analyze runs/ad/checkpoints -o series.csv --plots figs/
    alphaspec analyze EleutherAI/pythia-70m@step1000 \\
        EleutherAI/pythia-70m@step143000 -o pythia.csv
    alphaspec analyze @models.txt --summary zoo.csv --scores scores.csv

    # some layers, without the key projections
    alphaspec analyze model.safetensors --include 'layers\\.[0-3]\\.' \\
        --exclude 'k_proj'
""")
@with_options(OPTIONS)
def analyze(
    sources: tuple[str, ...], output: Path | None, estimator: str, device: str, include: list[str], exclude: list[str],
    split_fused: bool, save_spectra: Path | None, plots: Path | None, workers: int, farms: bool, precision: str,
    randomize: bool, permutations: int, seed: int, over_trained: float, under_trained: float, rank_loss: float,
    base: str | None, merge: bool, fail_on: str | None, summary: Path | None, scores: Path | None,
    steps: str | None, dry_run: bool, cache: bool, quiet: bool,
) -> None:
    """Eigenvalue spectrum and power-law tail fit (alpha) of every weight matrix in a checkpoint, the
    Marchenko-Pastur bulk, and verdicts on which matrices need attention."""
    from alphaspec.analysis.cpu_threads import auto_workers, one_thread_per_solve
    from alphaspec.analysis.options import AnalysisOptions
    from alphaspec.devices import resolve_device
    from alphaspec.distributed import joined, launched
    from alphaspec.files import check_output, check_output_dir, input_paths
    from alphaspec.sources.deltas import open_source

    thresholds = Thresholds(over_trained, under_trained, rank_loss)  # bad values fail before any work
    failing_on = parse_fail_on(fail_on)
    if "traps" in failing_on and not randomize:
        raise UsageError("--fail-on traps needs --randomize: traps are looked for in the permuted matrices")
    many = is_many(sources) or any(v is not None for v in (summary, scores, steps))
    if not many:
        source = sources[0]
    elif save_spectra is not None or dry_run:
        raise UsageError(f"{'--save-spectra' if save_spectra is not None else '--dry-run'} takes one source")
    rank, world, _ = launched()
    if rank == 0:  # under torchrun rank 0 writes everything (a failure here ends the job before it starts)
        inputs = [p for s in sources for p in input_paths(s)] + (input_paths(base) if base is not None else [])
        if output is not None:
            check_output(output, inputs=inputs)
        if save_spectra is not None:
            check_output(save_spectra, (".npz",), inputs=inputs)
        if summary is not None:
            check_output(summary, inputs=inputs)
        if plots is not None:
            check_output_dir(plots)
    dev = resolve_device(device)
    why = " (no CUDA device found)" if device == "auto" and dev.type == "cpu" else ""
    options = AnalysisOptions(estimator, tuple(include or ()), tuple(exclude or ()), split_fused,
                              save_spectra is not None or plots is not None, workers or auto_workers(dev, world),
                              farms, precision, permutations if randomize else 0, seed, base, merge, cache)
    if many:
        return run_many(sources, options, dev, output=output, summary_file=summary, scores_file=scores, steps=steps,
                        plots=plots, failing_on=failing_on, thresholds=thresholds, quiet=quiet)
    if dry_run:
        return _dry_run(source, options, dev, output, quiet)
    with joined(dev.type == "cuda"), one_thread_per_solve(options.workers, dev):
        ckpt = open_source(source, base, merge) if world == 1 else None
        where = f"{len(ckpt.tensors)} tensors in {len(ckpt.files)} file(s)" if ckpt else f"{world} ranks"
        header = f"alphaspec {__version__} · {where} · device {dev}{why} · estimator {estimator}" + (
            f" · precision {precision}" if precision != "fp64" else "")
        result = analyze_with_progress(source, estimator, dev, quiet or rank > 0, header, options=options,
                                       checkpoint=ckpt)
    if rank == 0:
        result.table["warning"] = verdicts(result.table, thresholds)
        _write(result, output, save_spectra, plots, quiet)
        check_verdicts(result.table, failing_on)


def _dry_run(source: str, options, dev, output: Path | None, quiet: bool) -> None:
    """--dry-run: the plan from the headers, its estimate, and with -o the list of matrices."""
    from alphaspec.analysis.dry_run import dry_run
    from alphaspec.analysis.store import store_enabled
    from alphaspec.analysis.table import write_table
    from alphaspec.sources.deltas import open_source

    ckpt = open_source(source, options.base, options.merge)
    plan = dry_run(ckpt, options, dev)
    if output is not None:
        write_table(plan.table, output)
    if quiet:
        return
    out.print(f"alphaspec {__version__} · {source} · {plan.n_tensors} tensors in {len(ckpt.files)} file(s) · "
              "headers only", highlight=False)
    parts = int((plan.table["part"] != "").sum())
    table = Table(title=f"would analyse {len(plan.table)} matrices" + (f" ({parts} parts of fused or expert "
                  "tensors)" if parts else ""), title_justify="left", header_style="bold")
    for col in ("module", "matrices", "most common shape", "share of the time"):
        table.add_column(col, justify="left" if col == "module" else "right")
    for r in plan.summary().itertuples():
        table.add_row(str(r.module), str(r.matrices), r.shape, f"{r.share:.0%}")
    out.print(table)
    reasons = Counter(s.reason for s in plan.skipped)
    out.print(f"{len(plan.skipped)} tensor(s) would be skipped" + (":" if plan.skipped else ""), highlight=False)
    for reason, count in reasons.most_common():
        example = next(s.name for s in plan.skipped if s.reason == reason)
        out.print(Text(f"  {count:>5} x {reason}  (e.g. {example})"))
    out.print(f"estimate on {plan.device} ({plan.workers} worker(s), {plan.rate / 1e9:.1f} G multiply-adds/s "
              f"measured now): {_duration(plan.seconds)} of solving, about {plan.peak_bytes / 1e9:.2f} GB held at "
              f"once; reading the weights adds their size over the disk's speed", highlight=False)
    if options.cache and store_enabled():
        out.print("spectra the eigenvalue store holds already are not solved again (--no-cache: solve all)",
                  highlight=False)
    if output is not None:
        out.print(f"wrote {output}", highlight=False)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


def _write(result: Analysis, output: Path | None, save_spectra: Path | None, plots: Path | None, quiet: bool) -> None:
    """The table, spectra and figures asked for, then the summary (rank 0 alone under torchrun)."""
    from alphaspec.analysis.table import write_results, write_spectra

    if output is not None:
        write_results(result, output)
    if save_spectra is not None:
        write_spectra(result, save_spectra)
    drawn = draw(result.table, result.spectra, plots, list(MODEL_FIGURES), "png", []) if plots is not None else None
    if not quiet:
        _report(result)
        if drawn is not None:
            report_figures(drawn)
        if output is not None:
            out.print(f"wrote {output}", highlight=False)
        else:
            out.print("[dim]save the full table with -o results.csv (or .json, .parquet)[/]")
