"""The AlphaDecay training hook: decays from the current weights, overlap, schedulers, DDP, HF Trainer."""

import math
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alphaspec import AlphaDecay

D, FF, VOCAB = 32, 64, 50
NAMES = ("q_proj", "k_proj", "v_proj", "o_proj")


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn, self.mlp = nn.Module(), nn.Module()
        for n in NAMES:
            setattr(self.self_attn, n, nn.Linear(D, D, bias=False))
        self.mlp.gate_proj, self.mlp.up_proj = nn.Linear(D, FF, bias=False), nn.Linear(D, FF, bias=False)
        self.mlp.down_proj = nn.Linear(FF, D, bias=False)
        self.input_layernorm = nn.LayerNorm(D)

    def forward(self, h):
        a, m, x = self.self_attn, self.mlp, self.input_layernorm(h)
        h = h + a.o_proj(a.q_proj(x) * torch.sigmoid(a.k_proj(x)) * a.v_proj(x))
        return h + m.down_proj(F.silu(m.gate_proj(h)) * m.up_proj(h))


class TinyLM(nn.Module):
    """LLaMA-like parameter names (model.layers.N.self_attn.q_proj.weight, ...) in a few lines."""

    def __init__(self, layers: int = 2):
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(VOCAB, D)
        self.model.layers = nn.ModuleList([Block() for _ in range(layers)])
        self.lm_head = nn.Linear(D, VOCAB, bias=False)

    def forward(self, x):
        h = self.model.embed_tokens(x)
        for block in self.model.layers:
            h = block(h)
        return self.lm_head(h)


def train_step(model, optimizer, seed):
    x = torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(seed))
    loss = F.cross_entropy(model(x).flatten(0, 1), x.flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


def expected_decays(model, w, ratio=(0.67, 3.0)):
    """docs/math.md §1-3 from scratch with numpy: median-alpha of each block matrix, then the linear map."""
    alphas = {}
    for name, p in model.named_parameters():
        if ".layers." in name and p.ndim == 2:
            m = (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().double().numpy()
            lam = np.sort(np.linalg.eigvalsh(m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T))
            lam = lam[lam > 1e-12 * lam[-1]]
            i = len(lam) // 2
            alphas[name] = 1 + (len(lam) - i) / np.sum(np.log(lam[i:] / lam[i]))
    lo, hi = min(alphas.values()), max(alphas.values())
    return {n: float(w * (ratio[0] + (ratio[1] - ratio[0]) * (a - lo) / (hi - lo))) for n, a in alphas.items()}


def group_decays(optimizer):
    return {g["name"]: g["weight_decay"] for g in optimizer.param_groups if "name" in g}


def test_refresh_uses_current_weights_and_training_continues():
    torch.manual_seed(0)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    hook = AlphaDecay(model, opt, gap=3, overlap=False)
    assert hook.refreshes == 1  # warmup="init": decays from the initial weights
    init = group_decays(opt)
    for name, wd in expected_decays(model, 0.1).items():
        assert init[name] == pytest.approx(wd, rel=1e-9)
    losses = [train_step(model, opt, s) for s in range(3)]
    hook.step(), hook.step(), hook.step()  # noqa: B018 - three optimizer steps happened
    assert hook.refreshes == 2 and hook.staleness == 0
    now = group_decays(opt)
    for name, wd in expected_decays(model, 0.1).items():
        assert now[name] == pytest.approx(wd, rel=1e-9)
    assert now != init
    assert len(opt.param_groups) == 14 + 1  # one group per block matrix, plus the rest
    assert set(hook.alphas) == set(now) and all(1 < a < 10 for a in hook.alphas.values())
    losses += [train_step(model, opt, 10 + s) for s in range(20)]
    assert losses[-1] < losses[0]
    assert {h["step"] for h in hook.history} == {0, 3}


def test_uniform_warmup_and_overlapped_refresh():
    torch.manual_seed(1)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    hook = AlphaDecay(model, opt, gap=2, warmup="uniform", overlap=True)
    assert set(group_decays(opt).values()) == {0.05} and hook.refreshes == 0
    for s in range(12):
        train_step(model, opt, s)
        hook.step()
    hook.close()
    assert hook.refreshes >= 1 and hook.staleness is not None and hook.staleness >= 0
    assert len(set(group_decays(opt).values())) > 1


def test_history_keeps_the_last_refreshes_and_drains_once():
    torch.manual_seed(0)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    hook = AlphaDecay(model, opt, gap=1, warmup="init", overlap=False, keep_history=2)
    for s in range(4):  # refreshes at steps 0 (init), 1, 2, 3, 4
        train_step(model, opt, s)
        hook.step()
    assert hook.refreshes == 5
    assert [h["step"] for h in hook.history] == [3] * 14 + [4] * 14  # 14 block matrices, the last 2 refreshes
    assert {h["weight_decay"] for h in hook.history if h["step"] == 4} == set(group_decays(opt).values())
    drained = hook.drain_history()
    assert len(drained) == 28 and hook.history == [] and hook.drain_history() == []
    train_step(model, opt, 9)
    hook.step()
    assert {h["step"] for h in hook.history} == {5}
    with pytest.raises(ValueError, match="keep_history"):
        AlphaDecay(model, opt, keep_history=0)


def test_work_is_shared_by_cost():
    from alphaspec.distributed import share_of_work

    tuned = {f"m{i}": torch.empty(4096, 4096) for i in range(4)} | {f"s{i}": torch.empty(64, 64) for i in range(8)}
    shares = [share_of_work(tuned, r, 2) for r in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(tuned) and not set(shares[0]) & set(shares[1])
    assert sum(n.startswith("m") for n in shares[0]) == 2  # the four big matrices split evenly


def test_scheduler_built_before_the_hook_follows_the_new_groups():
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    AlphaDecay(model, opt, gap=100, overlap=False, scheduler=sched)
    for s in range(3):
        train_step(model, opt, s)
        sched.step()
    assert len(opt.param_groups) == 15
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3 / 4] * 15)


def _distributed_worker(rank: int, world: int, init_file: str, out_dir: str, sharding: str) -> None:
    """Train TinyLM on 2 gloo ranks (DDP or FSDP2) with different data per rank; save what the hook decided."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = TinyLM()
    if sharding == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for block in model.model.layers:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    else:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    hook = AlphaDecay(model, opt, gap=2, overlap=False)
    for s in range(4):
        train_step(model, opt, 100 * rank + s)  # different data per rank; DDP/FSDP keep the weights equal
        hook.step()
    expected = expected_decays(getattr(model, "module", model), 0.1)  # full weights, after the step-4 refresh
    torch.save({"decays": group_decays(opt), "owned": hook.owned, "refreshes": hook.refreshes, "expected": expected},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()
    from alphaspec.distributed import end_rank

    end_rank(0)  # as the CLI does: a gloo worker thread can abort the interpreter's shutdown (see end_rank)


def _two_ranks(tmp_path, sharding: str) -> tuple[dict, dict]:
    import torch.multiprocessing as mp

    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "rdzv"), str(tmp_path), sharding), nprocs=2, join=True)
    return torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")


@pytest.mark.slow
def test_ddp_two_ranks_get_identical_decays_each_computed_once(tmp_path):
    r0, r1 = _two_ranks(tmp_path, "ddp")
    assert r0["refreshes"] == r1["refreshes"] == 3
    assert r0["decays"] == r1["decays"] and len(r0["decays"]) == 14
    assert set(r0["owned"]).isdisjoint(r1["owned"]) and len(r0["owned"]) + len(r1["owned"]) == 14


@pytest.mark.slow
def test_fsdp2_sharded_parameters(tmp_path):
    r0, r1 = _two_ranks(tmp_path, "fsdp2")
    assert r0["refreshes"] == r1["refreshes"] == 3
    assert r0["decays"] == r1["decays"] and len(r0["decays"]) == 14
    for name, wd in r0["expected"].items():
        assert r0["decays"][name] == pytest.approx(wd, rel=1e-9)


def test_hf_trainer_callback(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from alphaspec.maps.callbacks import AlphaDecayCallback

    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=D, intermediate_size=FF, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    ids = torch.randint(0, VOCAB, (16, 12), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": x, "labels": x} for x in ids]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4,
                                          learning_rate=1e-3, weight_decay=0.1, lr_scheduler_type="cosine",
                                          report_to=[], save_strategy="no", use_cpu=True, logging_steps=100)
    callback = AlphaDecayCallback(gap=2, overlap=False)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    hook = callback.hook
    assert hook is not None and hook.refreshes == 3  # init, step 2, step 4
    decays = group_decays(trainer.optimizer)
    assert len(decays) == 14 and len(set(decays.values())) > 1
    assert all(0.067 - 1e-12 <= wd <= 0.3 + 1e-12 for wd in decays.values())
    lrs = {g["lr"] for g in trainer.optimizer.param_groups}
    assert len(lrs) == 1 and not math.isnan(next(iter(lrs)))  # the scheduler drives every group alike


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))


def test_state_dict_resumes_the_refresh_schedule():
    torch.manual_seed(0)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    hook = AlphaDecay(model, opt, gap=4, overlap=False)
    for s in range(6):
        train_step(model, opt, s)
        hook.step()
    state = hook.state_dict()
    opt2 = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    resumed = AlphaDecay(model, opt2, gap=4, overlap=False, warmup="uniform")
    resumed.load_state_dict(state)
    assert group_decays(opt2) == group_decays(opt) and resumed.step_count == 6
    train_step(model, opt2, 6)
    resumed.step()
    assert resumed.refreshes == state["refreshes"]
    train_step(model, opt2, 7)
    resumed.step()  # step 8: the next multiple of gap, as in the uninterrupted run
    assert resumed.refreshes == state["refreshes"] + 1


def test_splitting_groups_leaves_the_schedulers_private_fields_alone():
    """split_param_groups remaps a scheduler's public per-group lists (base_lrs, lr_lambdas) and nothing private:
    SequentialLR's `_schedulers` (two of them, as many as the groups) stays the two schedulers it was, and each
    sub-scheduler keeps working; get_last_lr() has one entry per group after the next step."""
    from alphaspec.maps.groups import split_param_groups

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    opt = torch.optim.AdamW([{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 0.01}], lr=0.1)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, [lambda s: 0.5, lambda s: 0.25])
    decay = torch.optim.lr_scheduler.LambdaLR(opt, [lambda s: 1.0, lambda s: 1.0])
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, decay], milestones=[2])
    subs = list(sched._schedulers)
    split_param_groups(opt, {"0.weight": model[0].weight, "1.weight": model[1].weight}, sched)
    assert sched._schedulers == subs and len(opt.param_groups) == 4
    opt.step()
    sched.step()
    assert len(sched.get_last_lr()) == 4
