"""One home for every training setting: each option's default is written once, in TrainConfig, and is the
same in `alphaspec train --help` and in run.json of a run started without that option."""

import json
import sys
from dataclasses import MISSING

import pytest
from click.testing import CliRunner

from alphaspec.cli import app
from alphaspec.train.config import SECTION_TYPES, SECTIONS, TrainConfig, default_gap, option_fields
from alphaspec.train.data import bundled_corpus

CLI_FIELDS = [(section, f, key) for section, f, key in option_fields() if f.metadata["cli"]]
GIVEN = {"out", "data", "steps", "vocab_size", "seq_len", "batch_size", "eval_every", "eval_windows"}  # set below
DERIVED = {"strategy": "uniform", "gap": default_gap(2)}  # None in the dataclass: filled from other settings


def default_of(f):
    return [] if f.default is MISSING else f.default


def test_the_options_are_the_fields_with_their_defaults_and_sections():
    command = app.commands["train"]
    params = {p.name: p for p in command.params}
    assert set(params) - {"help"} == {key for _, _, key in CLI_FIELDS} | {"quiet"}
    for section, f, key in CLI_FIELDS:
        p = params[key]
        if key == "out":
            assert p.required
            continue
        want = default_of(f)
        got = [] if p.default is None and want == [] else p.default
        assert (list(got) if isinstance(got, tuple) else got) == (list(want) if isinstance(want, tuple) else want), key
        assert p.section == SECTION_TYPES[section].TITLE in SECTIONS
    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert [s for s in SECTIONS if f"\n{s}:\n" in res.output] == list(SECTIONS)  # --help grouped by section


@pytest.mark.slow
def test_run_json_holds_the_defaults_of_options_not_given(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(bundled_corpus()[0].read_text()[:20_000])
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "--data", str(text), "--steps", "2",
                                   "--vocab-size", "256", "--seq-len", "16", "--batch-size", "2", "--eval-every", "1",
                                   "--eval-windows", "2", "-q"])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "r" / "run.json").read_text())["config"]
    for section, f, key in CLI_FIELDS:
        if key in GIVEN:
            continue
        want = DERIVED.get(key, default_of(f))
        got = saved[key]
        assert got == (list(want) if isinstance(want, tuple) else want), key
        assert getattr(getattr(TrainConfig(), section), f.name) == default_of(f)  # the dataclass holds it too


def test_the_config_module_needs_no_torch():
    import subprocess

    code = "import sys, alphaspec.train.config, alphaspec.train.compare; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_options_by_name_and_by_section():
    from alphaspec.train.config import ConfigError

    cfg = TrainConfig.of(lr=3e-4, steps=50, model="llama-20m", data=["a.txt"], ratio=[0.5, 4.0])
    assert (cfg.optimizer.lr, cfg.schedule.steps, cfg.model.name, cfg.data.sources) == (3e-4, 50, "llama-20m", ["a.txt"])
    assert cfg.decay.ratio == (0.5, 4.0) and cfg["ratio"] == (0.5, 4.0)  # a JSON list becomes the tuple field
    assert TrainConfig.of(**cfg.flat()) == cfg  # what run.json records rebuilds the same config
    assert TrainConfig().optimizer.lr == 1e-3 and TrainConfig.of(lr=3e-4).schedule == TrainConfig().schedule
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig.of(learning_rate=1e-3)


def test_the_decay_section_gives_the_strategy_its_decay_spec():
    from alphaspec.maps.spec import DecaySpec

    assert TrainConfig().decay.spec() == DecaySpec()  # the trainer's defaults are the decay-map defaults
    spec = TrainConfig.of(ratio=(0.5, 2.0), metric="spectral_norm", estimator="gof").decay.spec(assign="sigmoid")
    assert spec == DecaySpec(ratio=(0.5, 2.0), assign="sigmoid", metric="spectral_norm", estimator="gof")


def test_a_run_recorded_by_an_earlier_version_still_resumes():
    """run.json of 0.1 held the flat dataclass, `given` included; it is read by option name."""
    from alphaspec.train.config import resumed_config

    saved = {**TrainConfig.of(steps=40, lr=5e-4, strategy="uniform", gap=4).flat(), "given": None}
    cfg = resumed_config(saved, TrainConfig.of(out="runs/x", resume=True, steps=80, given=("out", "resume", "steps")))
    assert (cfg.schedule.steps, cfg.optimizer.lr, cfg.decay.gap, cfg.run.out) == (80, 5e-4, 4, "runs/x")


def test_options_another_strategy_or_optimizer_reads_are_named_not_silently_dropped(tmp_path):
    """--lr-ratio under uniform or --muon-momentum under AdamW change nothing: the run says so in one warning
    (a sweep passing one flag set to every arm still runs); a resumed run is judged on its saved settings."""
    def inert(**options):
        return TrainConfig.of(given=tuple(options), out="r", **options).inert()

    assert inert(strategy="uniform", lr_ratio=(0.5, 2.0), gap=3) == ["--lr-ratio", "--gap"]
    assert inert(strategy="tempbalance", lr_ratio=(0.5, 2.0), gap=3) == []
    assert inert(strategy="alphadecay", lr_ease=5, muon_momentum=0.9) == ["--lr-ease", "--muon-momentum"]
    assert inert(optimizer="muon", muon_momentum=0.9) == []
    assert inert(decay_map="wd.json", gap=5) == ["--gap"]  # a static map implies alphadecay, refreshed by nothing
    assert inert(strategy="uniform", gap=3, resume=True) == []
    assert inert(strategy="uniform", estimator="gof") == []  # it also fits alphas.csv, in every run
    assert TrainConfig.of(strategy="uniform", lr_ratio=(0.5, 2.0)).inert() == []  # the Python API: nothing "given"
    text = tmp_path / "t.txt"
    text.write_text(bundled_corpus()[0].read_text()[:20_000])
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "--data", str(text), "--steps", "1",
                                   "--vocab-size", "256", "--seq-len", "16", "--batch-size", "2", "--eval-every", "1",
                                   "--eval-windows", "2", "--warmup-steps", "0", "--lr-ratio", "0.5", "2", "-q"],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "warning: --lr-ratio has no effect on this run (strategy uniform, optimizer adamw)" in res.output
