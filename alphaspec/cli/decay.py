"""`alphaspec decay-map`: AlphaDecay decays as a JSON map, with the per-type summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from alphaspec.choices import ASSIGN, DECAY_METRICS, PRESERVE
from alphaspec.cli.common import (
    Device,
    EstimatorOption,
    Exclude,
    Quiet,
    TunedInclude,
    app,
    choice_enum,
    decay_policy,
    finite,
    given,
    load,
    out,
    ratio_pair,
)
from alphaspec.errors import UsageError
from alphaspec.maps.spec import DecaySpec

Assign = choice_enum("Assign", ASSIGN)
Preserve = choice_enum("Preserve", PRESERVE)
Metric = choice_enum("Metric", DECAY_METRICS)


def _value(choice) -> str:
    return getattr(choice, "value", choice)  # an Enum member from the command line, a str default


@app.command("decay-map", no_args_is_help=True, epilog="""
**Examples**

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
def decay_map(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="A checkpoint (anything `analyze` takes) or a results file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The decay map to write (.json).")],
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0, callback=finite, help="Base decay w (AdamW-style; "
                                                "Adam with L2 uses ~1e-5 to 1e-6).")] = 0.1,
    ratio: Annotated[tuple[float, float], typer.Option("--ratio", callback=ratio_pair, metavar="S1 S2",
                                                       help="linear: decays span s1·w .. s2·w.")] = DecaySpec.ratio,
    assign: Annotated[Assign, typer.Option("--assign", help="How metric values become decays.")] = DecaySpec.assign,
    estimator: EstimatorOption = DecaySpec.estimator,
    metric: Annotated[Metric, typer.Option("--metric", metavar="METRIC", help="The spectral metric behind the decays: "
                                           + ", ".join(DECAY_METRICS) + ".")]
    = DecaySpec.metric,
    preserve_mean: Annotated[Preserve, typer.Option("--preserve-mean", help="Rescale so the plain (modules) or "
                                                    "parameter-weighted (params) mean decay is w.")]
    = DecaySpec.preserve_mean,
    default_decay: Annotated[str, typer.Option("--default-decay", callback=decay_policy, metavar="all|matrices|FLOAT",
                                               help="Untuned parameters: all (w), matrices (w, but "
                                               "0 for 1-D and embeddings) or a number.")] = "all",
    include: TunedInclude = None,
    exclude: Exclude = None,
    paper_compat: Annotated[bool, typer.Option("--paper-compat", help="Reproduce the AlphaDecay release's decays "
                                               "exactly (its module choice and formulas; see docs/decay.md).")]
    = DecaySpec.paper_compat,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """AlphaDecay module-wise weight decays from the spectra, as a JSON map for any training loop."""
    spec = DecaySpec(ratio=ratio, assign=_value(assign), metric=_value(metric), preserve_mean=_value(preserve_mean),
                     estimator=_value(estimator), include=include, exclude=exclude, paper_compat=paper_compat)
    default: str | float = default_decay if default_decay in ("all", "matrices") else float(default_decay)
    write_decay_map(source, output, spec, weight_decay, default, device, quiet, estimator_given=given(ctx, "estimator"))


def write_decay_map(source: str, output: Path, spec: DecaySpec, weight_decay: float, default: str | float, device: str,
                    quiet: bool, estimator_given: bool) -> None:
    """Analyse (or read) SOURCE, build the decay map, write it and print its summary."""
    from alphaspec.files import check_output, input_paths
    from alphaspec.maps.alphadecay import build_decay_map

    if spec.paper_compat and estimator_given and spec.estimator != DecaySpec.estimator:
        raise UsageError(f"--paper-compat fits with the release's estimator ({DecaySpec.estimator}), not "
                         f"{spec.estimator}: leave out -e")
    check_output(output, (".json",), inputs=input_paths(source))
    table, _ = load(source, spec.estimator, device, quiet, split_fused=not spec.paper_compat,
                    farms=spec.metric == "alpha_farms", asked="-e" if estimator_given else None)
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
