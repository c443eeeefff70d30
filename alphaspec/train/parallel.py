"""Data parallelism for the trainer: DDP or FSDP2 under torchrun, and the few collectives the loop needs.

With FSDP2 the parameters are DTensor shards; everything that needs whole tensors (checkpoints,
saved weights, norms here; single tensors through hook.full_tensor) is a collective every rank calls.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn


def wrap(model: nn.Module, world: int, device: torch.device, sharding: str, bf16: bool = False) -> nn.Module:
    """The module the loop trains: the model itself (one process), DDP, or the model with each block
    and then the whole sharded by FSDP2 (in place; build the optimizer afterwards). With bf16, FSDP2
    gathers the weights in bf16 for compute and reduces gradients in fp32; the shards stay fp32."""
    if world == 1:
        return model
    if sharding == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(device.type, (world,))
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
            else MixedPrecisionPolicy()
        for block in model.model.layers:
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sync_gradients(net: nn.Module, last_micro_batch: bool):
    """A context in which backward() reduces gradients over ranks only on the last micro-batch."""
    if isinstance(net, nn.parallel.DistributedDataParallel):
        return nullcontext() if last_micro_batch else net.no_sync()
    if hasattr(net, "set_requires_gradient_sync"):  # FSDP2
        net.set_requires_gradient_sync(last_micro_batch)
    return nullcontext()


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """sqrt(sum of squares) over tensors that may be shards of FSDP2 DTensors (float64, every rank alike)."""
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    dev = local[0].device if local else torch.device("cpu")
    sq = torch.stack([x.detach().double().pow(2).sum() for x in local]).sum() if local else torch.zeros((), device=dev)
    if any(hasattr(t, "to_local") for t in tensors):
        dist.all_reduce(sq)
    return sq.sqrt()


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model state dict on the CPU (gathered from FSDP2 shards; empty on ranks > 0 then)."""
    if not _sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The whole optimizer state keyed by parameter name (as torch.distributed.checkpoint's full state
    dict), so it loads whatever the sharding, the number of ranks or the order of the groups."""
    if _sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    name = _names_by_index(model, optimizer)
    sd = optimizer.state_dict()
    return {"state": {name[i]: {k: v.cpu() if torch.is_tensor(v) else v for k, v in st.items()}
                      for i, st in sd["state"].items()},
            "param_groups": [{**g, "params": [name[i] for i in g["params"]]} for g in sd["param_groups"]]}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load optimizer_state() output (every rank calls it)."""
    if _sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
        return
    index = {n: i for i, n in _names_by_index(model, optimizer).items()}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]
    optimizer.load_state_dict({"state": {index[n]: st for n, st in state["state"].items()}, "param_groups": groups})


def _names_by_index(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[int, str]:
    """Parameter names in the order optimizer.state_dict() numbers the parameters."""
    names = {id(p): n for n, p in model.named_parameters()}
    ordered = [p for g in optimizer.param_groups for p in g["params"]]
    return {i: names[id(p)] for i, p in enumerate(ordered)}


def _sharded(model: nn.Module) -> bool:
    return any(hasattr(p, "to_local") for p in model.parameters())
