"""Framework integrations; importable only where the framework is installed.

    from alphaspec.integrations import AlphaDecayCallback
    trainer = Trainer(model, args, ..., callbacks=[AlphaDecayCallback(gap=500)])
"""

from __future__ import annotations

import dataclasses

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("alphaspec.integrations needs transformers: pip install transformers") from err

from .maps.hook import AlphaDecay
from .maps.spec import DecaySpec

LOG_PREFIX = "alphadecay/"


class AlphaDecayCallback(TrainerCallback, ExportableState):
    """AlphaDecay inside Hugging Face `Trainer`: module-wise decays refreshed every `gap` optimizer steps.

    Takes the keyword arguments of `alphaspec.AlphaDecay`; the base decay defaults to
    `TrainingArguments.weight_decay`. The hook is built at the start of training, once the Trainer
    has created its optimizer and scheduler, and is available as `callback.hook`.

    Checkpoints: the hook's state (step count, decays, alphas) travels in the checkpoint's
    trainer_state.json, and the optimizer is saved with the param groups the Trainer made, so
    `trainer.train(resume_from_checkpoint=...)` loads it and the hook continues where it stopped.
    Logs: every log line gains the latest mean alpha and decay per module type
    (`alphadecay/alpha/att.q`, `alphadecay/weight_decay/mlp.up`, ...), in `state.log_history` and for
    the callbacks after this one. The Trainer runs its `report_to` callbacks before those it is given,
    so add this one with `AlphaDecayCallback.attach(trainer, ...)`, which puts it ahead of them through
    the Trainer's own add/remove_callback, and every `report_to` backend receives the values.
    """

    @classmethod
    def attach(cls, trainer, **alphadecay_kwargs) -> AlphaDecayCallback:
        """Add a new callback to `trainer` ahead of its reporting callbacks (TensorBoard, W&B, MLflow, ...),
        after the Trainer's own flow callback, so that what it adds to each log line reaches them."""
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        reporting = tuple(INTEGRATION_TO_CALLBACK.values())
        reporters = [c for c in trainer.callback_handler.callbacks if isinstance(c, reporting)]
        for reporter in reporters:
            trainer.remove_callback(reporter)
        callback = cls(**alphadecay_kwargs)
        trainer.add_callback(callback)
        for reporter in reporters:
            trainer.add_callback(reporter)
        return callback

    def __init__(self, **alphadecay_kwargs):
        spec = alphadecay_kwargs.pop("spec", None)
        if isinstance(spec, DecaySpec):  # kept as its fields, so the arguments can be written as JSON
            alphadecay_kwargs = dataclasses.asdict(spec) | alphadecay_kwargs
        self.kwargs = alphadecay_kwargs
        self.hook: AlphaDecay | None = None
        self.hook_state: dict | None = None  # from a checkpoint, until the hook is built

    def state(self) -> dict:
        """What the Trainer writes into each checkpoint's trainer_state.json for this callback."""
        hook_state = self.hook.state_dict() if self.hook is not None else self.hook_state
        return {"args": dict(self.kwargs), "attributes": {"hook_state": hook_state}}

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if optimizer is None:
            raise RuntimeError("AlphaDecayCallback needs the Trainer's optimizer (transformers >= 4.30)")
        saved = self.hook_state
        if saved is None and state.global_step > 0:  # resuming: this callback's entry of the checkpoint's state
            entry = state.stateful_callbacks.get(type(self).__name__) or {}
            entry = entry[-1] if isinstance(entry, list) else entry
            saved = entry.get("attributes", {}).get("hook_state")
        opts = {"weight_decay": args.weight_decay} | self.kwargs
        if saved is not None:
            opts["warmup"] = "uniform"  # the saved decays replace the first solve
        self.hook = AlphaDecay(model, optimizer, scheduler=lr_scheduler, **opts)
        if saved is not None:
            self.hook.load_state_dict(saved)
        self.hook_state = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.hook is None:
            return
        self.hook.step()
        if control.should_save:  # the Trainer saves after this event (DefaultFlowCallback decided it before)
            self.hook.close()  # a refresh in flight is applied, so the checkpoint holds it
            self.hook.merge_groups()

    def on_save(self, args, state, control, **kwargs):
        if self.hook is not None and not self.hook.groups:
            self.hook.split_groups()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.hook is None or logs is None or "loss" not in logs:
            return
        values = {LOG_PREFIX + k: v for k, v in self.hook.summary().items()}
        values[LOG_PREFIX + "refreshes"] = self.hook.refreshes
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)

    def on_train_end(self, args, state, control, **kwargs):
        if self.hook is not None:
            self.hook.close()
