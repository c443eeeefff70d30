"""AlphaDecayCallback and AlphaLRCallback in a real transformers.Trainer: stopped after a checkpoint and
resumed with resume_from_checkpoint, each continues exactly as an uninterrupted run; their alphas, decays
and learning-rate multipliers reach the Trainer's logs (log_history, and TensorBoard through the Trainer's
own reporting callback)."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from alphaspec.maps.callbacks import AlphaDecayCallback, AlphaLRCallback  # noqa: E402 - after the importorskip

STEPS, SAVE, GAP = 12, 4, 3


class Tokens(torch.utils.data.Dataset):
    """Fixed random sequences, the same in every run."""

    def __init__(self, n: int = 96, length: int = 16):
        self.ids = torch.randint(0, 100, (n, length), generator=torch.Generator().manual_seed(1))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class StopAt(transformers.TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def tiny_llama(seed: int):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    return transformers.LlamaForCausalLM(config)


class Checked(transformers.TrainerCallback):
    """At the start of every step (after any save's merge and split of the groups), each tuned matrix's group
    holds the schedule's LR x its multiplier (AlphaLR) or its decay (AlphaDecay); an untuned group holds the
    schedule's LR. `callback.checked` counts the steps checked."""

    def __init__(self, callback):
        self.callback, callback.checked = callback, 0

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        hook, groups = self.callback.hook, optimizer.param_groups
        scheduled = next(g["lr"] for g in groups if "name" not in g)
        for g in (g for g in groups if "name" in g):
            if isinstance(self.callback, AlphaLRCallback):
                assert g["lr"] == pytest.approx(scheduled * hook.decays[g["name"]], rel=1e-12), g["name"]
            else:
                assert g["lr"] == scheduled and g["weight_decay"] == pytest.approx(hook.decays[g["name"]], rel=1e-12)
        self.callback.checked += 1


HOOKS = {  # the callback and its arguments
    "alphadecay": (AlphaDecayCallback, {}),
    "tempbalance": (AlphaLRCallback, {"method": "tempbalance"}),
    "llr": (AlphaLRCallback, {"method": "llr", "ease": 5}),  # every refresh (gap 3) saved mid-ease
}


def train(out, *callbacks, seed: int = 0, resume: bool = False, report_to=(), hook: str = "alphadecay"):
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=8, learning_rate=3e-3, weight_decay=0.1,
        lr_scheduler_type="cosine", warmup_steps=2, logging_steps=1, save_steps=SAVE, save_strategy="steps",
        report_to=list(report_to), use_cpu=True, seed=0, data_seed=0, disable_tqdm=True)
    kind, options = HOOKS[hook]
    callback = kind(gap=GAP, overlap=False, **options)
    trainer = transformers.Trainer(model=tiny_llama(seed), args=args, train_dataset=Tokens(),
                                   callbacks=[callback, Checked(callback), *callbacks])
    trainer.train(resume_from_checkpoint=True if resume else None)
    return trainer, callback


def by_step(history: list[dict]) -> dict[int, dict]:
    return {h["step"]: h for h in history if "loss" in h}


@pytest.mark.parametrize("hook", list(HOOKS))
def test_a_resumed_run_continues_exactly_as_an_uninterrupted_one(tmp_path, hook):
    """Tolerance: 0 on the alphas, 1e-12 on decays and LR multipliers (a multiplier taken off a group's LR
    for the save and put back after), 1e-6 relative on losses and weights (the same float operations on the
    CPU; the bound only allows for a different summation order in a kernel)."""
    whole, whole_cb = train(tmp_path / "whole", hook=hook)
    train(tmp_path / "parts", StopAt(2 * SAVE), hook=hook)
    assert (tmp_path / "parts" / f"checkpoint-{2 * SAVE}").is_dir()
    saved = json.loads((tmp_path / "parts" / f"checkpoint-{2 * SAVE}" / "trainer_state.json").read_text())
    hook_state = saved["stateful_callbacks"][type(whole_cb).__name__]["attributes"]["hook_state"]
    assert hook_state["step_count"] == 2 * SAVE and hook_state["refreshes"] == 1 + 2 * SAVE // GAP
    resumed, resumed_cb = train(tmp_path / "parts", seed=123, resume=True, hook=hook)  # initial weights loaded over

    assert resumed_cb.hook.metrics == whole_cb.hook.metrics
    assert resumed_cb.hook.decays == pytest.approx(whole_cb.hook.decays, rel=1e-12)
    assert [g["lr"] for g in resumed.optimizer.param_groups] == pytest.approx(
        [g["lr"] for g in whole.optimizer.param_groups], rel=1e-12)  # the schedule x each matrix's multiplier
    assert resumed_cb.hook.step_count == STEPS and resumed_cb.hook.refreshes == whole_cb.hook.refreshes
    want, got = by_step(whole.state.log_history), by_step(resumed.state.log_history)
    assert set(range(2 * SAVE + 1, STEPS + 1)) <= set(got)
    for step in range(2 * SAVE + 1, STEPS + 1):
        assert got[step]["loss"] == pytest.approx(want[step]["loss"], rel=1e-6)
        for key in (k for k in want[step] if k.startswith(whole_cb.log_prefix)):
            assert got[step][key] == pytest.approx(want[step][key], rel=1e-12), key
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)
    # the groups the Trainer made were saved; the hook's split groups are in force again after each save
    optimizer = torch.load(tmp_path / "parts" / f"checkpoint-{STEPS}" / "optimizer.pt", weights_only=True)
    assert len(optimizer["param_groups"]) == 2
    named = [g["name"] for g in resumed.optimizer.param_groups if "name" in g and len(g["params"]) == 1]
    assert sorted(named) == sorted(resumed_cb.hook.tuned)  # one group per tuned matrix, the rest as the Trainer made
    assert whole_cb.checked == STEPS and resumed_cb.checked == STEPS - 2 * SAVE  # every step's groups were right
    value = "weight_decay" if hook == "alphadecay" else "lr_scale"
    assert {f"{whole_cb.log_prefix}alpha/mlp.up", f"{whole_cb.log_prefix}{value}/mlp.up"} <= set(want[STEPS])


def test_the_logs_hold_alphas_and_decays_per_module_type(tmp_path):
    trainer, callback = train(tmp_path / "run")
    entry = by_step(trainer.state.log_history)[STEPS]
    modules = {"att.q", "att.k", "att.v", "att.o", "mlp.gate", "mlp.up", "mlp.down"}
    assert {k.removeprefix("alphadecay/alpha/") for k in entry if k.startswith("alphadecay/alpha/")} == modules
    table = callback.hook.metrics
    q = [a for n, a in table.items() if "q_proj" in n]
    assert entry["alphadecay/alpha/att.q"] == pytest.approx(sum(q) / len(q), rel=1e-12)
    decays = [callback.hook.decays[n] for n in table if "down_proj" in n]
    assert entry["alphadecay/weight_decay/mlp.down"] == pytest.approx(sum(decays) / len(decays), rel=1e-12)
    assert entry["alphadecay/refreshes"] == callback.hook.refreshes


def test_tensorboard_receives_them_when_its_callback_follows(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers.integrations import TensorBoardCallback

    trainer, _ = train(tmp_path / "run", TensorBoardCallback())
    logdir = next(p.parent for p in (tmp_path / "run").rglob("events.out.tfevents.*"))
    events = EventAccumulator(str(logdir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/alphadecay/alpha/att.q", "train/alphadecay/weight_decay/mlp.up"} <= tags
    last = events.Scalars("train/alphadecay/alpha/att.q")[-1]
    assert last.step == STEPS
    assert last.value == pytest.approx(by_step(trainer.state.log_history)[STEPS]["alphadecay/alpha/att.q"], rel=1e-6)


def test_attach_puts_it_ahead_of_the_report_to_callbacks(tmp_path):
    """With report_to=["tensorboard"] the Trainer's own TensorBoardCallback runs before the callbacks it is
    given; attach() reorders through add/remove_callback, so the event files hold alphadecay's scalars."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=8, learning_rate=3e-3,
        weight_decay=0.1, logging_steps=1, save_strategy="no", report_to=["tensorboard"], use_cpu=True,
        disable_tqdm=True)
    trainer = transformers.Trainer(model=tiny_llama(0), args=args, train_dataset=Tokens())
    callback = AlphaDecayCallback.attach(trainer, gap=2, overlap=False)
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert names.index("DefaultFlowCallback") < names.index("AlphaDecayCallback") < names.index("TensorBoardCallback")
    trainer.train()
    logdir = next(p.parent for p in (tmp_path / "run").rglob("events.out.tfevents.*"))
    events = EventAccumulator(str(logdir))
    events.Reload()
    assert "train/alphadecay/alpha/att.q" in events.Tags()["scalars"]
    assert events.Scalars("train/alphadecay/refreshes")[-1].value == callback.hook.refreshes


def test_given_in_callbacks_it_says_once_which_backends_miss_its_scalars(tmp_path, caplog):
    """callbacks=[AlphaDecayCallback(...)] with report_to=["tensorboard"]: none of TensorBoard's tags was an alpha
    or a decay, and nothing said why. Now one warning names the backend and the way that works (attach)."""
    pytest.importorskip("tensorboard")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=8, learning_rate=3e-3,
        weight_decay=0.1, logging_steps=1, save_strategy="no", report_to=["tensorboard"], use_cpu=True,
        disable_tqdm=True)
    with caplog.at_level("WARNING", logger="alphaspec"):
        trainer = transformers.Trainer(model=tiny_llama(0), args=args, train_dataset=Tokens(),
                                       callbacks=[AlphaDecayCallback(gap=2, overlap=False)])
        trainer.train()
    said = [r.getMessage() for r in caplog.records if "AlphaDecayCallback" in r.getMessage()]
    assert len(said) == 1 and "not tensorboard" in said[0] and "AlphaDecayCallback.attach(trainer" in said[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="alphaspec"):  # attached: nothing to say
        trainer = transformers.Trainer(model=tiny_llama(0), args=args, train_dataset=Tokens())
        AlphaDecayCallback.attach(trainer, gap=2, overlap=False)
        trainer.train()
    assert not [r for r in caplog.records if "AlphaDecayCallback" in r.getMessage()]


@pytest.mark.parametrize("make,error,match", [
    (lambda: AlphaLRCallback(method="banana"), "DecayMapError", "method 'banana' makes no lr map"),
    (lambda: AlphaLRCallback(gapp=3), "TypeError", "unexpected argument\\(s\\) gapp: it takes AlphaLR's"),
    (lambda: AlphaLRCallback(target=0.5), "DecayMapError", "target is a setting of sparsity maps"),
    (lambda: AlphaDecayCallback(ratio=(3, 1)), "DecayMapError", "ratio \\(3, 1\\): need two finite numbers"),
    (lambda: AlphaDecayCallback(assign="step"), "DecayMapError", "unknown assign 'step'"),
    (lambda: AlphaLRCallback(spec={"method": "llr"}), "TypeError", "spec must be a MapSpec, not dict"),
    (lambda: AlphaDecayCallback(scheduler=None), "TypeError", "unexpected argument\\(s\\) scheduler"),  # the Trainer's
])
def test_bad_arguments_fail_where_the_callback_is_made(make, error, match):
    """Not at the start of training, minutes later, inside the Trainer."""
    with pytest.raises(Exception, match=match) as caught:
        make()
    assert type(caught.value).__name__ == error


def test_good_arguments_are_kept_for_the_hook():
    assert AlphaLRCallback(method="llr", ease=4, ratio=(1, 2), gap=3).kwargs == {"method": "llr", "ease": 4,
                                                                                 "ratio": (1, 2), "gap": 3}
    assert AlphaDecayCallback(gap=3, ratio=(0.5, 2), overlap=False, weight_decay=0.05).kwargs["ratio"] == (0.5, 2)
