"""Weight-decay strategies against hand computations of docs/math.md §3–5 on a tiny LLaMA."""

import math

import numpy as np
import pytest
import torch

from alphaspec.train.loop import TrainConfig
from alphaspec.train.model import Llama, ModelConfig, is_multiplier
from alphaspec.train.strategies import AWD, AdaDecay, Strategy, clip_parameters, make_strategy

CFG = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)


def build(cfg: TrainConfig, lrm: str = "none"):
    torch.manual_seed(0)
    model = Llama(CFG, lrm=lrm)
    strategy = make_strategy(cfg)
    opt = torch.optim.AdamW(strategy.param_groups(model), lr=cfg.optimizer.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    strategy.setup(model, opt, sched)
    return model, strategy, opt


def decay_of(opt) -> dict[int, float]:
    return {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}


def set_grads(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * torch.rand(1, generator=g)


@pytest.mark.parametrize("policy", ["all", "matrices", "0.02"])
def test_uniform_policies(policy):
    model, _, opt = build(TrainConfig.of(weight_decay=0.1, default_decay=policy))
    wd = decay_of(opt)
    for name, p in model.named_parameters():
        block_matrix = p.ndim == 2 and ".layers." in name
        if block_matrix or policy == "all":
            expected = 0.1
        elif policy == "matrices":
            expected = 0.0 if (p.ndim == 1 or "embed_tokens" in name) else 0.1
        else:
            expected = 0.02
        assert wd[id(p)] == expected, name


def test_awd_follows_the_gradient_to_weight_norm_ratio():
    model, strategy, opt = build(TrainConfig.of(strategy="awd", weight_decay=0.05))
    assert isinstance(strategy, AWD)
    params = list(model.parameters())
    expected = 0.0
    for seed in range(3):
        set_grads(model, seed)
        grad_norm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params))
        weight_norm = math.sqrt(sum(float((p.detach().double() ** 2).sum()) for p in params))
        expected = 0.1 * expected + 0.9 * 0.05 * grad_norm / weight_norm
        strategy.before_step(seed + 1, model, opt, torch.tensor(grad_norm))
        assert list(decay_of(opt).values()) == pytest.approx([expected] * len(params), rel=1e-6)
    assert strategy.state_dict()["smoothed"] == pytest.approx(expected, rel=1e-6)


def test_adadecay_is_the_per_block_sigmoid_of_gradient_norms():
    model, strategy, opt = build(TrainConfig.of(strategy="adadecay", weight_decay=0.1, gap=5))
    assert isinstance(strategy, AdaDecay)
    set_grads(model, 3)
    strategy.before_step(1, model, opt, torch.tensor(1.0))
    wd = decay_of(opt)
    for layer in range(2):
        mats = [(n, p) for n, p in model.named_parameters() if f"layers.{layer}." in n and p.ndim == 2]
        norms = np.array([float(p.grad.double().norm()) for _, p in mats])
        z = (norms - norms.mean()) / (norms.std() + 1e-8)
        for (name, p), zi in zip(mats, z, strict=True):
            assert wd[id(p)] == pytest.approx(0.1 * 2 / (1 + math.exp(-4 * zi)), rel=1e-9), name
    before = decay_of(opt)
    set_grads(model, 4)
    strategy.before_step(2, model, opt, torch.tensor(1.0))  # not a refit step (gap 5)
    assert decay_of(opt) == before
    rows = strategy.decay_rows()
    assert {r["step"] for r in rows} == {0, 1} and sum(r["step"] == 1 for r in rows) == 14


def test_multipliers_get_their_own_group_and_no_clipping():
    model, _, opt = build(TrainConfig.of(strategy="lrm", lr=1e-3, lrm_decay=2e-3, lrm_lr_mult=0.5), lrm="vector")
    group = next(g for g in opt.param_groups if g.get("name") == "multipliers")
    mults = {id(p) for n, p in model.named_parameters() if is_multiplier(n)}
    assert {id(p) for p in group["params"]} == mults and len(mults) == 14
    assert group["weight_decay"] == 2e-3 and group["lr"] == pytest.approx(5e-4)
    assert mults.isdisjoint(id(p) for p in clip_parameters(model))
    assert len(clip_parameters(model)) == sum(1 for n, _ in model.named_parameters() if not is_multiplier(n))


def test_strategy_of_each_name():
    assert type(make_strategy(TrainConfig.of(strategy="uniform"))) is Strategy
    assert make_strategy(TrainConfig.of(strategy="alphadecay")).__class__.__name__ == "Refreshed"
    assert make_strategy(TrainConfig.of(strategy="alphadecay", decay_map="x.json")).__class__.__name__ == "StaticMap"


def test_adamw_decays_decoupled_and_adam_through_the_gradient():
    """With a zero loss gradient: AdamW shrinks θ by exactly (1 − lr·λ); Adam's L2 term goes through the
    moments, so its first step moves every weight by ~lr·sign(θ) (docs/math.md §4)."""
    from alphaspec.train.optim import make_optimizer

    theta = torch.tensor([0.5, -2.0, 3.0])
    for name, expected in (("adamw", theta * (1 - 0.01 * 0.1)), ("adam", theta - 0.01 * torch.sign(theta))):
        p = torch.nn.Parameter(theta.clone())
        opt = make_optimizer(TrainConfig.of(optimizer=name, lr=0.01, eps=1e-12), [{"params": [p], "weight_decay": 0.1}],
                             torch.device("cpu"))
        p.grad = torch.zeros(3)
        opt.step()
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)


def test_cautious_decay_only_where_update_and_weight_agree_in_sign():
    """SGD makes the update u = g known: theta1 = theta0 - lr*g - lr*w*[sign(g) == sign(theta0)]*theta0, by hand."""
    torch.manual_seed(0)
    model = Llama(CFG)
    strategy = make_strategy(TrainConfig.of(strategy="cautious", weight_decay=0.3))
    opt = torch.optim.SGD(strategy.param_groups(model), lr=0.1)
    strategy.setup(model, opt, None)
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)  # the optimizer's own decay is off
    set_grads(model)
    before = {n: (p.detach().double().numpy().copy(), p.grad.double().numpy().copy()) for n, p in model.named_parameters()}
    strategy.before_step(1, model, opt, torch.tensor(1.0))
    opt.step()
    strategy.after_step(1)
    agreed = total = 0
    for name, p in model.named_parameters():
        theta, g = before[name]
        mask = np.sign(g) == np.sign(theta)
        want = theta - 0.1 * g - 0.1 * 0.3 * mask * theta
        np.testing.assert_allclose(p.detach().double().numpy(), want, rtol=1e-5, atol=1e-7, err_msg=name)
        agreed, total = agreed + mask.sum(), total + mask.size
    row = strategy.decay_rows()[-1]  # after the step-0 rows of the groups
    assert row["step"] == 1 and row["name"] == "*"
    assert row["metric"] == pytest.approx(agreed / total) and 0.3 < row["metric"] < 0.7


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
@pytest.mark.parametrize("strategy", ["uniform", "alphadecay", "awd", "adadecay", "lrm", "cautious", "mup", "tempbalance",
                                      "llr"])
def test_every_strategy_trains_under_each_decoupled_optimizer(tmp_path, strategy, optimizer):
    from alphaspec.train import train
    from alphaspec.train.data import bundled_corpus

    if optimizer == "muon" and not hasattr(torch.optim, "Muon"):
        pytest.skip("torch.optim.Muon needs torch >= 2.9")
    text = tmp_path / "t.txt"
    text.write_text(bundled_corpus()[0].read_text()[:30_000])
    last = train(TrainConfig.of(out=str(tmp_path / "r"), data=[str(text)], strategy=strategy, optimizer=optimizer,
                                gap=2, steps=4, vocab_size=256, seq_len=16, batch_size=2, eval_every=4, eval_windows=2,
                                analyze_every=0))
    assert math.isfinite(last["loss"]) and math.isfinite(last["eval_loss"])
