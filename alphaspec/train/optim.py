"""The optimizers of `alphaspec train` (docs/train.md, "Optimizers"): AdamW, Adam with L2 decay, and Muon.

Muon (torch.optim.Muon) orthogonalises the momentum of each 2-D hidden matrix of the blocks by a
Newton–Schulz iteration; everything else (embeddings, head, norms, learnable multipliers) stays with
AdamW, as the Muon and Moonlight recipes do. `MuonAdamW` holds both behind one torch Optimizer, so
the LR scheduler, every decay strategy (which set `weight_decay` per param group), the AlphaDecay
hook (which splits groups) and checkpoints see a single optimizer with one list of param groups.
"""

from __future__ import annotations

import torch

from alphaspec.train.config import ConfigError, TrainConfig


def make_optimizer(cfg: TrainConfig, groups: list[dict], device: torch.device,
                   muon_params: set[int] = frozenset()) -> torch.optim.Optimizer:
    """AdamW (decoupled decay: θ ← θ − lr·(u + λθ)), Adam with L2 decay (λθ added to the gradient), or Muon
    for the parameters in `muon_params` (ids) with AdamW for the rest; docs/math.md §4."""
    o = cfg.optimizer
    fused = {"fused": True} if device.type == "cuda" else {}
    if o.name != "muon":
        opt_cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
        return opt_cls(groups, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=cfg.decay.weight_decay, **fused)
    if not hasattr(torch.optim, "Muon"):
        raise ConfigError(f"--optimizer muon needs torch.optim.Muon (torch >= 2.9); this is torch {torch.__version__}")
    split = []
    for g in groups:  # each group in two: its Muon matrices and its AdamW rest, same hyperparameters
        ours = [p for p in g["params"] if id(p) in muon_params]
        rest = [p for p in g["params"] if id(p) not in muon_params]
        split += [{**g, "params": ps, "muon": kind} for ps, kind in ((ours, True), (rest, False)) if ps]
    return MuonAdamW(split, lr=o.lr, weight_decay=cfg.decay.weight_decay, betas=o.betas, eps=o.eps,
                     momentum=o.muon_momentum, nesterov=o.muon_nesterov, ns_steps=o.muon_ns_steps,
                     adjust_lr_fn=o.muon_adjust_lr, fused=bool(fused))


class MuonAdamW(torch.optim.Optimizer):
    """torch.optim.Muon for the groups with `muon: True`, torch.optim.AdamW for the others.

    The group dicts are shared with the two inner optimizers, and so is the per-parameter state, so
    `param_groups`, `state_dict()` and `load_state_dict()` behave as one optimizer's. Groups may be
    split or regrouped between steps (the AlphaDecay hook does): each step hands every group to the
    optimizer its `muon` flag names.
    """

    def __init__(self, groups: list[dict], *, lr: float, weight_decay: float, betas=(0.9, 0.95), eps: float = 1e-8,
                 momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 adjust_lr_fn: str = "match_rms_adamw", fused: bool = False):
        muon = [g for g in groups if g["muon"]]
        adam = [g for g in groups if not g["muon"]]
        # an optimizer refuses an empty list of groups: a placeholder keeps each one valid until step()
        self._muon = torch.optim.Muon(muon or [{"params": [], "muon": True}], lr=lr, weight_decay=weight_decay,
                                      momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                      adjust_lr_fn=adjust_lr_fn)
        self._adamw = torch.optim.AdamW(adam or [{"params": [], "muon": False}], lr=lr, betas=betas, eps=eps,
                                        weight_decay=weight_decay, **({"fused": True} if fused else {}))
        super().__init__(muon + adam, {"lr": lr, "weight_decay": weight_decay})
        self._share_state()

    def _share_state(self) -> None:
        self._muon.state = self._adamw.state = self.state

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        self._muon.param_groups[:] = [g for g in self.param_groups if g["muon"]]
        self._adamw.param_groups[:] = [g for g in self.param_groups if not g["muon"]]
        for inner in (self._muon, self._adamw):
            for group in inner.param_groups:  # a group that changed sides gets the other optimizer's defaults
                for key, value in inner.defaults.items():
                    group.setdefault(key, value)
            if inner.param_groups:
                inner.step()
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._share_state()  # the base class made a new state dict
