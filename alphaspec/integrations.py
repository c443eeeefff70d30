"""Framework integrations; importable only where the framework is installed.

    from alphaspec.integrations import AlphaDecayCallback
    trainer = Trainer(model, args, ..., callbacks=[AlphaDecayCallback(gap=500)])
"""

from __future__ import annotations

try:
    from transformers import TrainerCallback
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("alphaspec.integrations needs transformers: pip install transformers") from err

from .hook import AlphaDecay


class AlphaDecayCallback(TrainerCallback):
    """AlphaDecay inside Hugging Face `Trainer`: module-wise decays refreshed every `gap` optimizer steps.

    Takes the keyword arguments of `alphaspec.AlphaDecay`; the base decay defaults to
    `TrainingArguments.weight_decay`. The hook is built at the start of training, once the Trainer
    has created its optimizer and scheduler, and is available as `callback.hook`.
    """

    def __init__(self, **alphadecay_kwargs):
        self.kwargs = alphadecay_kwargs
        self.hook: AlphaDecay | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if optimizer is None:
            raise RuntimeError("AlphaDecayCallback needs the Trainer's optimizer (transformers >= 4.30)")
        opts = {"weight_decay": args.weight_decay} | self.kwargs
        self.hook = AlphaDecay(model, optimizer, scheduler=lr_scheduler, **opts)

    def on_step_end(self, args, state, control, **kwargs):
        if self.hook is not None:
            self.hook.step()

    def on_train_end(self, args, state, control, **kwargs):
        if self.hook is not None:
            self.hook.close()
