"""`alphaspec map KIND SOURCE`: per-module learning rates, sparsities, LoRA ranks or weight decays from the
spectra, as the released alpha-guided methods make them, with a per-type summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from alphaspec.choices import DECAY_METRICS, ESTIMATORS, LR_ASSIGN
from alphaspec.cli.common import Device, Quiet, app, choice_enum, finite, load, out
from alphaspec.errors import UsageError
from alphaspec.maps.file import KINDS
from alphaspec.maps.spec import METHODS

Kind = choice_enum("Kind", KINDS)
MethodName = choice_enum("MethodName", tuple(METHODS))
Estimator = choice_enum("MapEstimator", ESTIMATORS)
LrAssign = choice_enum("LrAssign", LR_ASSIGN)
Metric = choice_enum("MapMetric", DECAY_METRICS)

_METHODS_HELP = "; ".join(f"{m.name} ({m.kind})" for m in METHODS.values())


@app.command("map", no_args_is_help=True, epilog="""
**Examples**

    # TempBalance: 0.5..1.5 x lr per Linear
    alphaspec map lr ./my-llama -o lr.json

    # layer-wise LR: weaker tail, larger LR
    alphaspec map lr ./my-llama -o lr.json --method llr --ratio 1 5

    # AlphaPruning
    alphaspec map sparsity ./llama-7b -o sparsity.json --target 0.7

    # AlphaLoRA
    alphaspec map lora_rank ./mistral-7b -o ranks.json --budget 160

    # the same as decay-map
    alphaspec map weight_decay ./my-llama -o wd.json
""")
def make_map(
    kind: Annotated[Kind, typer.Argument(help="What the map's values are: lr (multipliers of the base learning "
                                          "rate), sparsity, lora_rank or weight_decay.")],
    source: Annotated[str, typer.Argument(help="A checkpoint (anything `analyze` takes) or a results file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The map to write (.json).")],
    method: Annotated[MethodName | None, typer.Option("--method", help="The released method whose choices and "
                                                      f"formula to use (default: the kind's first): {_METHODS_HELP}.")]
    = None,
    metric: Annotated[Metric, typer.Option("--metric", metavar="METRIC", help="The spectral metric behind the values.")]
    = "alpha",
    estimator: Annotated[Estimator | None, typer.Option("-e", "--estimator", help="How xmin is chosen when analysing "
                                                        "(default: the method's: median, or fix-finger).")] = None,
    ratio: Annotated[tuple[float, float] | None, typer.Option("--ratio", metavar="S1 S2", callback=finite,
                                                              help="lr: multipliers span S1..S2 (tempbalance 0.5 1.5, "
                                                              "llr 1 3); weight_decay: S1·w..S2·w.")] = None,
    assign: Annotated[LrAssign | None, typer.Option("--assign", help="lr: how the metric becomes multipliers "
                                                    "(default linear).")] = None,
    target: Annotated[float | None, typer.Option("--target", callback=finite, help="sparsity: the parameter-weighted "
                                                 "mean sparsity (default 0.5).")] = None,
    epsilon: Annotated[float | None, typer.Option("--epsilon", callback=finite, help="sparsity: matrices get "
                                                  "[1-eps, 1+eps] x target before rescaling (default 0.3).")] = None,
    block_wise: Annotated[bool | None, typer.Option("--block-wise/--per-matrix", help="sparsity: one metric per "
                                                    "block (its mean; the default) or per matrix.")] = None,
    budget: Annotated[int | None, typer.Option("--budget", help="lora_rank: the ranks' total (default 5 per "
                                               "block).")] = None,
    beta: Annotated[float | None, typer.Option("--beta", callback=finite, help="lora_rank: ranks follow mean "
                                               "alpha^beta (default 2.5).")] = None,
    paper_compat: Annotated[bool, typer.Option("--paper-compat", help="Fit with the release's own estimator "
                                               "(alphapruning, alphalora: fix-finger-legacy); weight_decay: as "
                                               "decay-map --paper-compat.")] = False,
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0, callback=finite, help="weight_decay: "
                                                "the base decay w.")] = 0.1,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Per-module values from the spectra, as the alpha-guided methods make them: TempBalance or layer-wise
    learning rates, AlphaPruning sparsities, AlphaLoRA ranks, AlphaDecay weight decays."""
    from alphaspec.analysis.table import fitted_with
    from alphaspec.files import check_output, input_paths
    from alphaspec.maps.build import MapSpec, build_map
    from alphaspec.maps.spec import METHODS

    kind = kind.value
    check_output(output, (".json",), inputs=input_paths(source))
    spec = MapSpec(method=method and method.value, metric=metric.value, estimator=estimator and estimator.value,
                   ratio=ratio, assign=assign and assign.value, target=target, epsilon=epsilon, block_wise=block_wise,
                   budget=budget, beta=beta, paper_compat=paper_compat)
    if problem := spec.problem(kind):
        raise UsageError(problem)
    if kind == "weight_decay":
        return _decay_map(source, output, spec, weight_decay, device, quiet)
    spec = spec.settled(kind)
    table, _ = load(source, spec.estimator, device, quiet, split_fused=False, farms=spec.metric == "alpha_farms",
                    asked="-e" if estimator is not None else "--paper-compat" if paper_compat else None,
                    rounded_to=METHODS[spec.method].release_dtype if paper_compat else None)
    vmap = build_map(table, kind, spec, source=source)
    if (fitted := fitted_with(table)) not in (None, spec.estimator):  # a results file, fitted otherwise
        vmap.notes.append(f"{source} was fitted with {fitted}; {spec.method} fits with {spec.estimator} (analyse the "
                          f"checkpoint with -e {spec.estimator} for its own alphas, or give -e {fitted} to silence this)")
    vmap.save(output)
    if not quiet:
        out.print(summary(vmap))
        out.print(f"wrote {output} ({len(vmap.modules)} matrices, method {vmap.method})", highlight=False)
        for note in vmap.notes:
            out.print(f"note: {note}", highlight=False)


def _decay_map(source, output, spec, weight_decay, device, quiet) -> None:
    """`map weight_decay`: AlphaDecay, as `decay-map` makes it with these settings (checked by MapSpec)."""
    from alphaspec.cli.decay import write_decay_map
    from alphaspec.maps.spec import DecaySpec

    decays = DecaySpec(ratio=spec.ratio or DecaySpec.ratio, assign=spec.assign or DecaySpec.assign,
                       estimator=spec.estimator or DecaySpec.estimator, metric=spec.metric,
                       paper_compat=spec.paper_compat)
    write_decay_map(source, output, decays, weight_decay, "all", device, quiet, estimator_given=spec.estimator is not None)


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
