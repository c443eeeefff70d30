"""`alphaspec map KIND SOURCE`: per-module learning rates, sparsities, LoRA ranks or weight decays from the
spectra, as the released alpha-guided methods make them, with a per-type summary. `alphaspec decay-map` is
`map weight_decay` under its own name (AlphaDecay's, the command the paper's users know): the same options,
the same code."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from alphaspec.choices import ASSIGN, DECAY_METRICS, ESTIMATORS, LR_ASSIGN, MAP_KINDS, PRESERVE
from alphaspec.cli.common import (
    app,
    cache_option,
    decay_policy,
    device_option,
    estimator_option,
    exclude_option,
    finite,
    given,
    load,
    out,
    quiet_option,
    ratio_pair,
    tuned_include_option,
)
from alphaspec.cli.help import PATH, argument, option, with_options
from alphaspec.errors import UsageError
from alphaspec.maps.spec import METHODS, DecaySpec, MapSpec

_METHODS_HELP = "; ".join(f"{m.name} ({m.kind})" for m in METHODS.values())
_SOURCE = "A checkpoint (anything `analyze` takes) or a results file."
_METRIC = "The spectral metric behind the values: " + ", ".join(DECAY_METRICS) + "."
_POLICY = "all|matrices|FLOAT"

# -- map's options, in --help order --------------------------------------------------------------------------------
MAP_OPTIONS = [
    argument("kind", type=click.Choice(MAP_KINDS), help="What the map's values are: lr (multipliers of the base learning "
             "rate), sparsity, lora_rank or weight_decay."),
    argument("source", help=_SOURCE),
    option("-o", "--output", type=PATH, required=True, help="The map to write (.json)."),
    option("--method", type=click.Choice(tuple(METHODS)), help="The released method whose choices and formula to use "
           f"(default: the kind's first): {_METHODS_HELP}."),
    option("--metric", type=click.Choice(DECAY_METRICS), default="alpha", metavar_="METRIC", help=_METRIC),
    option("-e", "--estimator", type=click.Choice(ESTIMATORS), help="How xmin is chosen when analysing (default: the "
           "method's: median, or fix-finger)."),
    option("--ratio", type=float, nargs=2, default=None, metavar_="S1 S2", callback=ratio_pair, help="lr: "
           "multipliers span S1..S2 (tempbalance 0.5 1.5, llr 1 3); weight_decay: decays span S1·w..S2·w (default "
           "0.6666 5)."),
    option("--assign", type=click.Choice(tuple(dict.fromkeys(LR_ASSIGN + ASSIGN))), help="lr and weight_decay: how "
           "the metric becomes values (default linear)."),
    option("--target", type=float, callback=finite, help="sparsity: the parameter-weighted mean sparsity (default "
           "0.5)."),
    option("--epsilon", type=float, callback=finite, help="sparsity: matrices get [1-eps, 1+eps] x target before "
           "rescaling (default 0.3)."),
    option("--block-wise/--per-matrix", default=None, help="sparsity: one metric per block (its mean; the default) "
           "or per matrix."),
    option("--budget", type=int, help="lora_rank: the ranks' total (default 5 per block)."),
    option("--beta", type=float, callback=finite, help="lora_rank: ranks follow mean alpha^beta (default 2.5)."),
    option("--paper-compat", is_flag=True, help="Reproduce the release exactly: its estimator (alphapruning, "
           "alphalora: fix-finger-legacy) and, for weight_decay, AlphaDecay's module choice and formulas "
           "(docs/decay.md)."),
    option("--weight-decay", type=click.FloatRange(min=0.0), default=0.1, callback=finite, help="weight_decay: the "
           "base decay w (AdamW-style; Adam with L2 uses ~1e-5 to 1e-6)."),
    option("--preserve-mean", type=click.Choice(PRESERVE), help="weight_decay: rescale so the plain (modules) or "
           "parameter-weighted (params) mean decay is w (default none)."),
    option("--default-decay", callback=decay_policy, metavar_=_POLICY, help="weight_decay: untuned parameters get "
           "all (w), matrices (w, but 0 for 1-D and embeddings) or a number (default all)."),
    tuned_include_option,
    exclude_option,
    device_option,
    cache_option,
    quiet_option,
]

# -- decay-map's: the weight_decay ones, in AlphaDecay's words and with its defaults --------------------------------
DECAY_MAP_OPTIONS = [
    argument("source", help=_SOURCE),
    option("-o", "--output", type=PATH, required=True, help="The decay map to write (.json)."),
    option("--weight-decay", type=click.FloatRange(min=0.0), default=0.1, callback=finite, help="Base decay w "
           "(AdamW-style; Adam with L2 uses ~1e-5 to 1e-6)."),
    option("--ratio", type=float, nargs=2, default=DecaySpec.ratio, metavar_="S1 S2", callback=ratio_pair,
           help="linear: decays span s1·w .. s2·w."),
    option("--assign", type=click.Choice(ASSIGN), default=DecaySpec.assign, help="How metric values become decays."),
    estimator_option,
    option("--metric", type=click.Choice(DECAY_METRICS), default=DecaySpec.metric, metavar_="METRIC",
           help="The spectral metric behind the decays: " + ", ".join(DECAY_METRICS) + "."),
    option("--preserve-mean", type=click.Choice(PRESERVE), default=DecaySpec.preserve_mean, help="Rescale so the "
           "plain (modules) or parameter-weighted (params) mean decay is w."),
    option("--default-decay", callback=decay_policy, default="all", metavar_=_POLICY, help="Untuned parameters: "
           "all (w), matrices (w, but 0 for 1-D and embeddings) or a number."),
    tuned_include_option,
    exclude_option,
    option("--paper-compat", is_flag=True, help="Reproduce the AlphaDecay release's decays exactly (its module "
           "choice and formulas; see docs/decay.md)."),
    device_option,
    cache_option,
    quiet_option,
]


@app.command("decay-map", no_args_is_help=True, epilog="""
Examples:

    # AdamW-style base decay 0.1
    alphaspec decay-map ./my-llama -o wd.json

    # Adam with L2 decay, the mean decay per parameter kept at w
    alphaspec decay-map r.json -o wd.json --weight-decay 5e-6 \\
        --ratio 0.67 5 --preserve-mean params

    alphaspec decay-map model/ -o wd.json --assign sigmoid \\
        --metric spectral_norm --default-decay matrices

    # as released
    alphaspec decay-map ./smollm2 -o wd.json --weight-decay 1e-5 \\
        --ratio 0.6666 3 --paper-compat
""")
@with_options(DECAY_MAP_OPTIONS)
@click.pass_context
def decay_map(ctx: click.Context, source: str, output: Path, weight_decay: float, ratio: tuple[float, float],
              assign: str, estimator: str, metric: str, preserve_mean: str, default_decay: str, include: list[str],
              exclude: list[str], paper_compat: bool, device: str, cache: bool, quiet: bool) -> None:
    """AlphaDecay module-wise weight decays from the spectra, as a JSON map for any training loop (the same as
    `alphaspec map weight_decay`: these options keep AlphaDecay's words and defaults)."""
    write_map("weight_decay", source, output, metric=metric, estimator=estimator if given(ctx, "estimator")
              else None, ratio=ratio, assign=assign, paper_compat=paper_compat, weight_decay=weight_decay,
              preserve_mean=preserve_mean, default_decay=default_decay, include=include, exclude=exclude,
              device=device, cache=cache, quiet=quiet)


@app.command("map", no_args_is_help=True, epilog="""
Examples:

    # TempBalance: 0.5..1.5 x lr per Linear
    alphaspec map lr ./my-llama -o lr.json

    # layer-wise LR: weaker tail, larger LR
    alphaspec map lr ./my-llama -o lr.json --method llr --ratio 1 5

    # AlphaPruning
    alphaspec map sparsity ./llama-7b -o sparsity.json --target 0.7

    # AlphaLoRA
    alphaspec map lora_rank ./mistral-7b -o ranks.json --budget 160

    # AlphaDecay (the same as decay-map)
    alphaspec map weight_decay ./my-llama -o wd.json
""")
@with_options(MAP_OPTIONS)
def make_map(kind: str, **settings) -> None:
    """Per-module values from the spectra, as the alpha-guided methods make them: TempBalance or layer-wise
    learning rates, AlphaPruning sparsities, AlphaLoRA ranks, AlphaDecay weight decays."""
    write_map(kind, **settings)


def write_map(kind: str, source: str, output: Path, method: str | None = None, metric: str = "alpha",
              estimator: str | None = None, ratio: tuple[float, float] | None = None, assign: str | None = None,
              target: float | None = None, epsilon: float | None = None, block_wise: bool | None = None,
              budget: int | None = None, beta: float | None = None, paper_compat: bool = False,
              weight_decay: float = 0.1, preserve_mean: str | None = None, default_decay: str | None = None,
              include: list[str] = (), exclude: list[str] = (), device: str = "auto", cache: bool = True,
              quiet: bool = False) -> None:
    """Both commands' work: check the settings against `kind`, then build and write its map."""
    from alphaspec.files import check_output, input_paths

    decay_only = {"preserve_mean": preserve_mean, "default_decay": default_decay, "include": include,
                  "exclude": exclude}
    if kind != "weight_decay" and (named := [k for k, v in decay_only.items() if v]):
        raise UsageError(f"--{named[0].replace('_', '-')} is a setting of weight_decay maps; {kind} maps have no use "
                         "for it")
    check_output(output, (".json",), inputs=input_paths(source))
    spec = MapSpec(method=method, metric=metric, estimator=estimator, ratio=ratio, assign=assign, target=target,
                   epsilon=epsilon, block_wise=block_wise, budget=budget, beta=beta, paper_compat=paper_compat)
    if problem := spec.problem(kind):
        raise UsageError(problem)
    if kind == "weight_decay":
        decays = DecaySpec(ratio=spec.ratio or DecaySpec.ratio, assign=spec.assign or DecaySpec.assign,
                           estimator=spec.estimator or DecaySpec.estimator, metric=spec.metric,
                           preserve_mean=preserve_mean or DecaySpec.preserve_mean, include=tuple(include),
                           exclude=tuple(exclude), paper_compat=spec.paper_compat)
        default = default_decay or "all"
        return write_decay_map(source, output, decays, weight_decay, default if default in ("all", "matrices")
                               else float(default), device, quiet, estimator_given=spec.estimator is not None,
                               cache=cache)
    _write_value_map(kind, source, output, spec.settled(kind), device, quiet, estimator is not None, cache)


def _write_value_map(kind: str, source: str, output: Path, spec, device: str, quiet: bool, estimator_given: bool,
                     cache: bool = True) -> None:
    """Analyse (or read) SOURCE, build the map of `kind` by `spec` (settled), write it and print its summary."""
    from alphaspec.maps.build import build_map

    table, _ = load(source, spec.estimator, device, quiet, split_fused=False, farms=spec.metric == "alpha_farms",
                    asked="-e" if estimator_given else "--paper-compat" if spec.paper_compat else None,
                    rounded_to=METHODS[spec.method].release_dtype if spec.paper_compat else None, cache=cache,
                    refit=True)
    vmap = build_map(table, kind, spec, source=source)
    vmap.save(output)
    if not quiet:
        out.print(summary(vmap))
        out.print(f"wrote {output} ({len(vmap.modules)} matrices, method {vmap.method})", highlight=False)
        for note in vmap.notes:
            out.print(f"note: {note}", highlight=False)


def write_decay_map(source: str, output: Path, spec: DecaySpec, weight_decay: float, default: str | float, device: str,
                    quiet: bool, estimator_given: bool, cache: bool = True) -> None:
    """Analyse (or read) SOURCE, build the decay map, write it and print its summary."""
    from alphaspec.files import check_output, input_paths
    from alphaspec.maps.alphadecay import build_decay_map

    if spec.paper_compat and estimator_given and spec.estimator != DecaySpec.estimator:
        raise UsageError(f"--paper-compat fits with the release's estimator ({DecaySpec.estimator}), not "
                         f"{spec.estimator}: leave out -e")
    check_output(output, (".json",), inputs=input_paths(source))
    table, _ = load(source, spec.estimator, device, quiet, split_fused=not spec.paper_compat,
                    farms=spec.metric == "alpha_farms", asked="-e" if estimator_given else None, cache=cache,
                    refit=True)
    dmap = build_decay_map(table, weight_decay, spec, default=default, source=source)
    dmap.save(output)
    if not quiet:
        out.print(_decay_summary(dmap))
        untouched = [m["name"] for m in dmap.modules if dmap.paper_compat and m.get(dmap.metric) is None]
        if untouched:
            out.print(f"{len(untouched)} Linear(s) the release leaves untuned keep w: " + ", ".join(untouched[:3])
                      + (" ..." if len(untouched) > 3 else ""), highlight=False)
        out.print(f"wrote {output} ({len(dmap.modules) - len(untouched)} tuned tensors)", highlight=False)
        for note in dmap.notes:
            out.print(f"note: {note}", highlight=False)


def summary(vmap) -> Table:
    """Per module type: how many, the mean metric, and the mean, smallest and largest value."""
    import pandas as pd

    every = pd.DataFrame(vmap.modules)
    key, metric = vmap.key, vmap.metric
    title = {"lr": "learning-rate multipliers", "sparsity": "sparsities", "lora_rank": "LoRA ranks"}[vmap.kind]
    table = Table(title=f"{vmap.method} {title} from {metric}", title_justify="left", header_style="bold")
    for col in ("module", "count", f"mean {metric}", f"mean {key}", "min", "max"):
        table.add_column(col, justify="left" if col == "module" else "right")
    fmt = (lambda v: f"{v:.0f}") if vmap.kind == "lora_rank" else (lambda v: f"{v:.3f}")
    for module, part in every.groupby("module", sort=False):
        vals = part[key].astype(float)
        table.add_row(str(module), str(len(part)), f"{part[metric].astype(float).mean():.3f}",
                      f"{vals.mean():.3f}", fmt(vals.min()), fmt(vals.max()))
    if vmap.kind == "sparsity":
        weighted = float((every[key] * every["params"]).sum() / every["params"].sum())
        table.caption = f"parameter-weighted mean sparsity {weighted:.4f} (target {vmap.settings['target']:g})"
    elif vmap.kind == "lora_rank":
        table.caption = f"ranks per block sum to {vmap.settings['budget']} (beta {vmap.settings['beta']:g})"
    else:
        left = int(every.get("note", pd.Series(dtype=object)).notna().sum())
        table.caption = f"{left} matrices left at the base learning rate by the release" if left else None
    return table


def _decay_summary(dmap) -> Table:
    import pandas as pd

    every = pd.DataFrame(dmap.modules)
    untouched = every[every[dmap.metric].isna()] if dmap.paper_compat else every.iloc[:0]
    mods = every.drop(index=untouched.index)  # the release's untouched Linears keep w: not among the tuned
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
