"""Muon beside AdamW in one optimizer, checked against independent computations."""

import math

import numpy as np
import pytest
import torch

from alphaspec.train.config import ConfigError, TrainConfig
from alphaspec.train.optim import MuonAdamW, make_optimizer

pytestmark = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
A, B, C = 3.4445, -4.7750, 2.0315  # Muon's quintic Newton-Schulz coefficients (Keller Jordan), as documented


def newton_schulz(g: np.ndarray, steps: int = 5) -> np.ndarray:
    """The orthogonalisation in float64: X <- aX + (bS + cS^2)X with S = XX^T, from X = G/||G||_F (wide form)."""
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(steps):
        s = x @ x.T
        x = A * x + (B * s + C * s @ s) @ x
    return x.T if g.shape[0] > g.shape[1] else x


def two_groups():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(48, 32))  # a hidden matrix: Muon
    b = torch.nn.Parameter(torch.randn(32))  # a norm weight: AdamW
    w.grad, b.grad = torch.randn(48, 32), torch.randn(32)
    return w, b


def test_one_muon_step_is_newton_schulz_of_the_momentum_with_the_documented_lr():
    """Step 1 with Nesterov momentum 0.95: update = NS(g + 0.95 * 0.05 g) = NS(g) up to scale (NS normalises);
    theta1 = theta0 (1 - lr wd) - lr * 0.2 * sqrt(max(A, B)) * NS(g). torch runs NS in bfloat16, so the
    float64 reference agrees to bfloat16 accuracy."""
    w, b = two_groups()
    w0, g = w.detach().clone(), w.grad.clone()
    lr, wd = 0.02, 0.1
    opt = MuonAdamW([{"params": [w], "muon": True}, {"params": [b], "muon": False}], lr=lr, weight_decay=wd)
    opt.step()
    ns = torch.as_tensor(newton_schulz(g.double().numpy()), dtype=torch.float32)
    want = w0 * (1 - lr * wd) - lr * 0.2 * math.sqrt(48) * ns
    step = w.detach() - w0 * (1 - lr * wd)
    error = float(torch.linalg.norm(step - (want - w0 * (1 - lr * wd))) / torch.linalg.norm(step))
    assert error < 2e-2, error  # bfloat16 Newton-Schulz against float64
    assert float(torch.linalg.norm(step)) == pytest.approx(lr * 0.2 * math.sqrt(48) * float(torch.linalg.norm(ns)),
                                                           rel=1e-2)  # the lr adjustment
    singular = torch.linalg.svdvals(ns)
    assert float(singular.min()) > 0.5 and float(singular.max()) < 1.5  # "US'V^T", S' in about (0.5, 1.5)


def test_the_adamw_groups_step_as_adamw_alone():
    w, b = two_groups()
    ref = torch.nn.Parameter(b.detach().clone())
    ref.grad = b.grad.clone()
    opt = MuonAdamW([{"params": [w], "muon": True}, {"params": [b], "muon": False}], lr=1e-2, weight_decay=0.1)
    alone = torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    for _ in range(3):
        opt.step()
        alone.step()
    assert torch.equal(b.detach(), ref.detach())
    assert set(opt.state[b]) == {"step", "exp_avg", "exp_avg_sq"} and set(opt.state[w]) == {"momentum_buffer"}


def test_groups_split_later_and_state_round_trip():
    """The AlphaDecay hook splits groups after the optimizer is made; state_dict/load_state_dict round-trip."""
    w, b = two_groups()
    opt = MuonAdamW([{"params": [w, b], "muon": False}], lr=1e-2, weight_decay=0.1)
    opt.param_groups[:] = [{**opt.param_groups[0], "params": [w], "muon": True, "weight_decay": 0.5},
                           {**opt.param_groups[0], "params": [b]}]
    opt.step()
    assert set(opt.state[w]) == {"momentum_buffer"}  # w moved to Muon: its decay and optimizer follow the group
    copy = MuonAdamW([{**g, "params": list(g["params"])} for g in opt.param_groups], lr=1e-2, weight_decay=0.1)
    copy.load_state_dict(opt.state_dict())
    assert torch.equal(copy.state[w]["momentum_buffer"], opt.state[w]["momentum_buffer"])
    copy.step()  # the loaded state is the one the inner optimizers use
    assert copy._muon.state is copy.state


def test_make_optimizer_gives_muon_only_the_named_matrices_and_fsdp_is_refused():
    w, b = two_groups()
    cfg = TrainConfig.of(optimizer="muon", lr=3e-3, weight_decay=0.05)
    opt = make_optimizer(cfg, [{"params": [w, b], "name": "all"}], torch.device("cpu"), {id(w)})
    assert [(g["muon"], len(g["params"]), g["name"], g["weight_decay"]) for g in opt.param_groups] == \
        [(True, 1, "all", 0.05), (False, 1, "all", 0.05)]
    assert opt.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw" and opt.param_groups[0]["momentum"] == 0.95
    with pytest.raises(ConfigError, match="--sharding ddp"):
        TrainConfig.of(optimizer="muon", sharding="fsdp").validate()


def test_the_step_is_torchs_orthogonalisation_with_the_documented_lr_and_decay_exactly():
    """With torch's own Newton-Schulz as the reference, the wrapper's step is exact: the routing to Muon, the
    decoupled decay with the unadjusted lr and the 0.2 sqrt(max(A, B)) adjustment."""
    muon_impl = pytest.importorskip("torch.optim._muon")
    w, b = two_groups()
    w0, g = w.detach().clone(), w.grad.clone()
    lr, wd, mu = 0.02, 0.1, 0.95
    MuonAdamW([{"params": [w], "muon": True}, {"params": [b], "muon": False}], lr=lr, weight_decay=wd,
              momentum=mu).step()
    buffer = torch.zeros_like(g).lerp_(g, 1 - mu)  # momentum at step 1, with torch's own float operations
    direction = g.lerp(buffer, mu)  # Nesterov: g + mu (buffer - g)
    ortho = muon_impl._zeropower_via_newtonschulz(direction, (A, B, C), 5, 1e-7).float()  # bfloat16 out
    torch.testing.assert_close(w.detach(), w0 * (1 - lr * wd) - lr * 0.2 * math.sqrt(48) * ortho, rtol=1e-6,
                               atol=1e-7)
