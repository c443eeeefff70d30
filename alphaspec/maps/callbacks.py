"""Framework integrations; importable only where the framework is installed.

    from alphaspec.maps.callbacks import AlphaDecayCallback, AlphaLRCallback
    trainer = Trainer(model, args, ..., callbacks=[AlphaDecayCallback(gap=500)])
    trainer = Trainer(model, args, ..., callbacks=[AlphaLRCallback(method="tempbalance", gap=500)])
"""

from __future__ import annotations

import dataclasses
import inspect
import logging

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("alphaspec.maps.callbacks needs transformers: pip install transformers") from err

from alphaspec.maps.hook import AlphaDecay
from alphaspec.maps.lr_hook import AlphaLR
from alphaspec.maps.spec import DecaySpec, MapSpec, decay_spec, hook_settings_problem

LOG_PREFIX = "alphadecay/"
log = logging.getLogger("alphaspec")


class HookCallback(TrainerCallback, ExportableState):
    """One of the library's refreshing hooks inside Hugging Face `Trainer` (AlphaDecayCallback, AlphaLRCallback).

    The hook is built at the start of training, once the Trainer has created its optimizer and scheduler,
    and is available as `callback.hook`. Checkpoints: the hook's state travels in the checkpoint's
    trainer_state.json, and the optimizer is saved with the param groups the Trainer made (the hook merges
    its per-matrix groups for the save and splits them after), so `trainer.train(resume_from_checkpoint=...)`
    loads it and the hook continues where it stopped. Logs: every log line gains the latest means per module
    type under `log_prefix`, in `state.log_history` and for the callbacks after this one; `attach()` puts
    it ahead of the Trainer's `report_to` callbacks, so every reporting backend receives them. Given in
    `callbacks=[...]` it runs after them (the Trainer puts them first, and a callback cannot reach the list
    to move itself): it then says so once, when training starts, naming the backends its scalars miss.
    """

    hook_class: type[AlphaDecay] = AlphaDecay
    log_prefix = LOG_PREFIX
    spec_class: type = DecaySpec

    @classmethod
    def attach(cls, trainer, **hook_kwargs) -> HookCallback:
        """Add a new callback to `trainer` ahead of its reporting callbacks (TensorBoard, W&B, MLflow, ...),
        after the Trainer's own flow callback, so that what it adds to each log line reaches them."""
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        reporting = tuple(INTEGRATION_TO_CALLBACK.values())
        reporters = [c for c in trainer.callback_handler.callbacks if isinstance(c, reporting)]
        for reporter in reporters:
            trainer.remove_callback(reporter)
        callback = cls(**hook_kwargs)
        callback.attached = True
        trainer.add_callback(callback)
        for reporter in reporters:
            trainer.add_callback(reporter)
        return callback

    def __init__(self, **hook_kwargs):
        spec = hook_kwargs.pop("spec", None)
        if spec is not None and not isinstance(spec, self.spec_class):
            raise TypeError(f"{type(self).__name__}: spec must be a {self.spec_class.__name__}, not {type(spec).__name__}")
        if spec is not None:  # kept as its fields, so the arguments can be written as JSON
            hook_kwargs = dataclasses.asdict(spec) | hook_kwargs
        self._check(hook_kwargs)
        self.kwargs = hook_kwargs
        self.hook: AlphaDecay | None = None
        self.hook_state: dict | None = None  # from a checkpoint, until the hook is built
        self.attached = False  # added by attach(), ahead of the reporting callbacks

    def _check(self, kwargs: dict) -> None:
        """Misspelt arguments and bad settings fail here, where the callback is made, not at the start of
        training: every name must be the hook's argument or its spec's field, and the spec must be valid."""
        trainers = {"self", "model", "optimizer", "scheduler", "options"}  # the Trainer's own are passed in
        named = set(inspect.signature(self.hook_class.__init__).parameters) - trainers
        fields = {f.name for f in dataclasses.fields(self.spec_class)}
        unknown = sorted(set(kwargs) - named - fields)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected argument(s) {', '.join(unknown)}: it takes "
                            f"{self.hook_class.__name__}'s (see help({self.hook_class.__name__}))")
        self.spec_of({k: v for k, v in kwargs.items() if k in fields})
        settings = {k: kwargs[k] for k in ("gap", "warmup", "keep_history", "ease") if k in kwargs and k in named}
        if problem := hook_settings_problem(**settings):
            raise ValueError(f"{type(self).__name__}: {problem}")

    def spec_of(self, fields: dict):
        """The spec these fields make, checked (a DecayMapError, an AlphaspecError, when they cannot be used)."""
        return decay_spec(None, fields)

    def state(self) -> dict:
        """What the Trainer writes into each checkpoint's trainer_state.json for this callback."""
        hook_state = self.hook.state_dict() if self.hook is not None else self.hook_state
        return {"args": dict(self.kwargs), "attributes": {"hook_state": hook_state}}

    def defaults(self, args) -> dict:
        """The hook's arguments taken from the TrainingArguments unless given."""
        return {}

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if optimizer is None:
            raise RuntimeError(f"{type(self).__name__} needs the Trainer's optimizer (transformers >= 4.30)")
        backends = [r for r in (args.report_to or []) if r != "none"]
        if backends and not self.attached:
            log.warning(f"{type(self).__name__}: its {self.log_prefix}* scalars reach trainer.state.log_history but not "
                        f"{', '.join(backends)}, whose callbacks the Trainer runs first; add it with "
                        f"{type(self).__name__}.attach(trainer, ...) instead of callbacks=[...] to log them there")
        saved = self.hook_state
        if saved is None and state.global_step > 0:  # resuming: this callback's entry of the checkpoint's state
            entry = state.stateful_callbacks.get(type(self).__name__) or {}
            entry = entry[-1] if isinstance(entry, list) else entry
            saved = entry.get("attributes", {}).get("hook_state")
        opts = self.defaults(args) | self.kwargs
        if saved is not None:
            opts["warmup"] = "uniform"  # the saved values replace the first solve
        self.hook = self.hook_class(model, optimizer, scheduler=lr_scheduler, **opts)
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
        values = {self.log_prefix + k: v for k, v in self.hook.summary().items()}
        values[self.log_prefix + "refreshes"] = self.hook.refreshes
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)

    def on_train_end(self, args, state, control, **kwargs):
        if self.hook is not None:
            self.hook.close()


class AlphaDecayCallback(HookCallback):
    """AlphaDecay inside Hugging Face `Trainer`: module-wise decays refreshed every `gap` optimizer steps.

    Takes the keyword arguments of `alphaspec.AlphaDecay`; the base decay defaults to
    `TrainingArguments.weight_decay`. Logs `alphadecay/alpha/att.q`, `alphadecay/weight_decay/mlp.up`, ...
    and `alphadecay/refreshes` (see HookCallback for checkpoints and reporting).
    """

    def defaults(self, args) -> dict:
        return {"weight_decay": args.weight_decay}


class AlphaLRCallback(HookCallback):
    """TempBalance or the layer-wise LR inside Hugging Face `Trainer`: per-matrix learning-rate multipliers
    refreshed every `gap` optimizer steps on top of the Trainer's schedule.

    Takes the keyword arguments of `alphaspec.AlphaLR` (method="tempbalance" or "llr", ratio, assign,
    ease, gap, ...). Logs `alphalr/alpha/att.q`, `alphalr/lr_scale/mlp.up`, ... and `alphalr/refreshes`
    (see HookCallback for checkpoints and reporting).
    """

    hook_class = AlphaLR
    log_prefix = "alphalr/"
    spec_class = MapSpec

    def spec_of(self, fields: dict):
        return MapSpec(**fields).settled("lr")
