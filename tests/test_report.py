"""`alphaspec report`: the page as a reader sees it, in a real headless Chromium (no console error, no network
request, sorting, filtering, a row opening its spectrum, a non-blank screenshot at 1280 px), hostile names
shown as written and never run, and the sections of runs and decay maps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import synth
import torch

import alphaspec
from alphaspec.report import render, write

HOSTILE = 'model.layers.1.mlp.up_proj.weight<script>window.__pwned=1</script>"\'é✓'


def browser():
    """Chromium through chromedriver (Debian's chromium and chromium-driver), or a clean skip."""
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("no chromium/chromedriver on this machine (apt install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--window-size=1280,1600"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)


@pytest.fixture(scope="module")
def hostile_model(tmp_path_factory):
    """A small LLaMA with one tensor named to break a page: a script tag, quotes, accents."""
    root = tmp_path_factory.mktemp("report") / "weird \"<b>dir' é"
    tensors = synth.llama(layers=3, dtype=torch.float32)
    tensors[HOSTILE] = tensors.pop("model.layers.1.mlp.up_proj.weight")
    return synth.write(root / "m", tensors, synth.LLAMA_CONFIG)


@pytest.fixture(scope="module")
def page(hostile_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("page") / "report.html"
    write(render([hostile_model]), out)
    return out


def test_hostile_text_is_escaped_in_the_html(page):
    text = page.read_text()
    assert "<script>window.__pwned" not in text and "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in text
    assert "<b>dir" not in text and "&lt;b&gt;dir" in text  # the source path, escaped too
    assert text.count("<script") == 2  # the page's own: its data (JSON) and its code
    for fetch in ('src="http', "src='http", 'href="http', "url(http", "@import", "<link"):
        assert fetch not in text  # nothing to fetch (the browser test records every request)


def test_the_page_in_chromium(page, tmp_path):
    driver = browser()
    try:
        driver.get(page.as_uri())
        by = pytest.importorskip("selenium.webdriver.common.by").By
        select = pytest.importorskip("selenium.webdriver.support.select").Select
        assert driver.execute_script("return window.__pwned") is None  # the planted script never ran
        names = [td.text for td in driver.find_elements(by.CSS_SELECTOR, "table.matrices tbody td:first-child")]
        assert HOSTILE in names  # shown as written
        # sorting: click alpha, ascending; again, descending
        header = next(th for th in driver.find_elements(by.CSS_SELECTOR, "table.matrices th") if th.text == "alpha")
        column = int(header.get_attribute("data-col"))

        def alphas():
            cells = driver.find_elements(by.CSS_SELECTOR, f"table.matrices tbody tr td:nth-child({column + 1})")
            return [float(c.get_attribute("data-v")) for c in cells if c.get_attribute("data-v")]

        header.click()
        assert alphas() == sorted(alphas()) and len(alphas()) > 10
        header.click()
        assert alphas() == sorted(alphas(), reverse=True)
        # filtering by module type
        select(driver.find_element(by.CSS_SELECTOR, "select[data-filter=module]")).select_by_value("mlp.down")
        visible = [r for r in driver.find_elements(by.CSS_SELECTOR, "table.matrices tbody tr") if r.is_displayed()]
        assert len(visible) == 3 and all(r.get_attribute("data-module") == "mlp.down" for r in visible)
        assert driver.find_element(by.CSS_SELECTOR, ".shown").text.startswith("3 of ")
        # a row opens its spectrum with the fit
        visible[0].click()
        panel = driver.find_element(by.CSS_SELECTOR, "div.esd")
        assert panel.is_displayed()
        assert panel.find_elements(by.CSS_SELECTOR, "svg path.density") and panel.find_elements(by.CSS_SELECTOR,
                                                                                                "svg path.fit")
        assert "alpha = " in panel.find_element(by.CSS_SELECTOR, "text.esd-title").text
        # no console error, no request but the page itself
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        requests = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
        urls = [m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"]
        assert urls and all(u == page.as_uri() or u.startswith("data:") for u in urls), urls
        # the page at a laptop's width, on screen and not blank
        driver.set_window_size(1280, 1600)
        shot = tmp_path / "shot.png"
        driver.save_screenshot(str(shot))
        from matplotlib.image import imread

        pixels = imread(shot)
        assert pixels.shape[1] == 1280 and pixels[..., :3].std() > 0.05
    finally:
        driver.quit()


def test_a_results_table_with_notes_and_a_decay_map(tmp_path, hostile_model):
    """A results file (its notes planted) and a decay map: notes escaped, the map's section with every tensor."""
    result = alphaspec.analyze_checkpoint(hostile_model, device="cpu", keep_spectra=True)
    result.notes.append("<img src=x onerror=window.__pwned=2>")
    from alphaspec.analysis.table import write_results, write_spectra

    write_results(result, tmp_path / "r.json")
    write_spectra(result, tmp_path / "r.npz")
    dmap = alphaspec.build_decay_map(result.table, 0.1)
    dmap.save(tmp_path / "wd.json")
    html = render([tmp_path / "r.json"], decay_map=tmp_path / "wd.json")
    assert "&lt;img src=x onerror=window.__pwned=2&gt;" in html and "<img src=x" not in html
    assert "<h2>Decay map</h2>" in html and html.count("<tr>") >= len(dmap.modules)
    assert 'class="has-esd"' in html  # spectra from r.npz: rows open them


def test_training_runs_compared(tmp_path):
    """Two runs: the compare table with its interval column, the loss figure, and the last checkpoint."""
    from alphaspec.train import TrainConfig, train
    from alphaspec.train.data import bundled_corpus

    text = tmp_path / "t.txt"
    text.write_text(bundled_corpus()[0].read_text()[:40_000])
    for strategy in ("uniform", "alphadecay"):
        train(TrainConfig.of(out=str(tmp_path / strategy), data=[str(text)], vocab_size=512, seq_len=32, batch_size=4,
                             steps=4, warmup_steps=1, eval_every=2, eval_windows=2, strategy=strategy, gap=2))
    html = render([tmp_path / "uniform", tmp_path / "alphadecay"])
    assert "2 training runs" in html and "Δ vs baseline [95 % CI]" in html and "baseline: uniform" in html
    assert "Last checkpoint of alphadecay" in html and html.count("<svg") >= 4


def test_cli_writes_the_page_and_refuses_bad_outputs(tmp_path, hostile_model):
    env = os.environ | {"COLUMNS": "120"}
    res = subprocess.run([sys.executable, "-m", "alphaspec", "report", str(hostile_model), "-o", str(tmp_path / "r.html")],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0 and "wrote" in res.stdout, res.stderr
    bad = subprocess.run([sys.executable, "-m", "alphaspec", "report", str(hostile_model), "-o", str(tmp_path / "r.pdf")],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: ") and ".html" in bad.stderr
    inside = subprocess.run([sys.executable, "-m", "alphaspec", "report", str(hostile_model), "-o",
                             str(hostile_model / "r.html")], capture_output=True, text=True, env=env)
    assert inside.returncode == 2 and not (hostile_model / "r.html").exists()


def test_a_13b_shaped_table_renders_quickly(tmp_path):
    """280 rows of 13B shapes (no spectra): the page in well under 10 s (bench/report.py measures it)."""
    import time

    rows = []
    for layer in range(40):
        for module, (r, c) in {"att.q": (5120, 5120), "att.k": (5120, 5120), "att.v": (5120, 5120),
                               "att.o": (5120, 5120), "mlp.gate": (13824, 5120), "mlp.up": (13824, 5120),
                               "mlp.down": (5120, 13824)}.items():
            rows.append({"name": f"model.layers.{layer}.{module}.weight", "layer": layer, "module": module, "rows": r,
                         "cols": c, "estimator": "median", "alpha": 2.0 + np.random.rand(), "status": "ok"})
    import pandas as pd

    pd.DataFrame(rows).to_csv(tmp_path / "r.csv", index=False)
    started = time.perf_counter()
    html = render([tmp_path / "r.csv"])
    assert time.perf_counter() - started < 10 and html.count('data-module="mlp.up"') == 40


def test_nothing_to_report_is_a_usage_error():
    from alphaspec.errors import UsageError

    with pytest.raises(UsageError, match="report needs a SOURCE"):
        render([])
    assert Path(alphaspec.report.__file__).parent.joinpath("assets", "report.js").is_file()


def test_the_runs_table_writes_losses_alike_with_signed_differences():
    """`0.000156` beside `-0.030`: mixed precision and no sign in the runs' comparison table."""
    from types import SimpleNamespace

    import pandas as pd

    from alphaspec.report.runs import compare_table

    summary = pd.DataFrame([
        {"label": "alphadecay", "n": 3, "eval_loss": 3.2001, "eval_loss_std": 0.000156, "best_eval_loss": 3.19,
         "vs_baseline": -0.03, "ci_low": -0.0412, "ci_high": -0.0188, "p_holm": 0.004, "applied_over_w": 1.0},
        {"label": "uniform", "n": 3, "eval_loss": 3.2301, "eval_loss_std": 0.0021, "best_eval_loss": 3.22,
         "vs_baseline": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "p_holm": float("nan"),
         "applied_over_w": 1.0}])
    summary.attrs["baseline"] = "uniform"
    html = compare_table(SimpleNamespace(summary=summary))
    for cell in ("3.2001", "0.0002", "3.1900", "-0.0300 [-0.0412, -0.0188]", "0.0021"):
        assert f">{cell}<" in html, cell
    assert "0.000156" not in html


def test_a_figure_is_inlined_whole_when_its_title_is_wider_than_its_canvas():
    """The decay map's figure was clipped in the report ("aDecay: linear map..."): a fixed 540 pt viewBox."""
    import re

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alphaspec.report.html import figure

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, 1])
    fig.suptitle("AlphaDecay: linear map from alpha, s1 = 0.67, s2 = 3.0, base w = 0.1, 96 tuned tensors, mean kept")
    svg = figure(fig, "a figure")
    plt.close(fig)
    width = float(re.search(r'viewBox="0 0 ([\d.]+) ', svg).group(1))
    assert width > 3 * 72 + 50  # the title's width, not the 216 pt canvas
