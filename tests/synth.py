"""Small synthetic checkpoints of each model family, written with safetensors (shapes as the real ones)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

D, HEADS, HD, FF, VOCAB = 32, 4, 8, 48, 64


def rand(*shape: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 7919 * len(shape) + sum(shape))
    return torch.randn(*shape, generator=g).to(dtype)


def write(folder: Path, tensors: dict[str, torch.Tensor], config: dict | None = None,
          filename: str = "model.safetensors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / filename))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def llama(layers: int = 2, kv_heads: int = 2, dtype=torch.bfloat16, lm_head: bool = False) -> dict:
    t = {"model.embed_tokens.weight": rand(VOCAB, D, dtype=dtype), "model.norm.weight": torch.ones(D, dtype=dtype)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t |= {p + "self_attn.q_proj.weight": rand(HEADS * HD, D, seed=i, dtype=dtype),
              p + "self_attn.k_proj.weight": rand(kv_heads * HD, D, seed=i + 1, dtype=dtype),
              p + "self_attn.v_proj.weight": rand(kv_heads * HD, D, seed=i + 2, dtype=dtype),
              p + "self_attn.o_proj.weight": rand(D, HEADS * HD, seed=i + 3, dtype=dtype),
              p + "mlp.gate_proj.weight": rand(FF, D, seed=i, dtype=dtype),
              p + "mlp.up_proj.weight": rand(FF, D, seed=i + 1, dtype=dtype),
              p + "mlp.down_proj.weight": rand(D, FF, seed=i, dtype=dtype),
              p + "input_layernorm.weight": torch.ones(D, dtype=dtype),
              p + "post_attention_layernorm.weight": torch.ones(D, dtype=dtype)}
    if lm_head:
        t["lm_head.weight"] = rand(VOCAB, D, seed=99, dtype=dtype)
    return t


LLAMA_CONFIG = {"model_type": "llama", "hidden_size": D, "num_attention_heads": HEADS, "num_key_value_heads": 2,
                "intermediate_size": FF, "num_hidden_layers": 2, "vocab_size": VOCAB, "tie_word_embeddings": True}


def labelled_qkv(layout: str, nh: int, nkv: int) -> torch.Tensor:
    """A fused q/k/v weight whose q rows hold 1, k rows 2 and v rows 3, in the family's row layout."""
    if layout == "contiguous":
        vals = [1.0] * (nh * HD) + [2.0] * (nkv * HD) + [3.0] * (nkv * HD)
    elif layout == "per_head":
        vals = ([1.0] * HD + [2.0] * HD + [3.0] * HD) * nh
    else:  # grouped: per kv group, nh/nkv query heads then one k and one v head
        vals = ([1.0] * (nh // nkv * HD) + [2.0] * HD + [3.0] * HD) * nkv
    return torch.tensor(vals)[:, None] * torch.ones(1, D) + 0.01 * rand(len(vals), D)


def gpt2(layers: int = 2) -> dict:
    t = {"wte.weight": rand(VOCAB, D), "wpe.weight": rand(16, D), "ln_f.weight": torch.ones(D), "ln_f.bias": torch.zeros(D)}
    for i in range(layers):
        p = f"h.{i}."
        t |= {p + "ln_1.weight": torch.ones(D), p + "ln_1.bias": torch.zeros(D),
              p + "attn.bias": torch.tril(torch.ones(16, 16)).view(1, 1, 16, 16),
              p + "attn.c_attn.weight": rand(D, 3 * D, seed=i), p + "attn.c_attn.bias": torch.zeros(3 * D),
              p + "attn.c_proj.weight": rand(D, D, seed=i), p + "mlp.c_fc.weight": rand(D, 4 * D, seed=i),
              p + "mlp.c_proj.weight": rand(4 * D, D, seed=i)}
    return t


def neox(layers: int = 2) -> dict:
    t = {"gpt_neox.embed_in.weight": rand(VOCAB, D), "embed_out.weight": rand(VOCAB, D, seed=1)}
    for i in range(layers):
        p = f"gpt_neox.layers.{i}."
        t |= {p + "attention.query_key_value.weight": labelled_qkv("per_head", HEADS, HEADS),
              p + "attention.query_key_value.bias": torch.zeros(3 * D),
              p + "attention.dense.weight": rand(D, D, seed=i), p + "mlp.dense_h_to_4h.weight": rand(4 * D, D, seed=i),
              p + "mlp.dense_4h_to_h.weight": rand(D, 4 * D, seed=i), p + "input_layernorm.weight": torch.ones(D),
              p + "attention.rotary_emb.inv_freq": torch.ones(HD // 2)}
    return t


def phi3(layers: int = 2, kv_heads: int = 2) -> dict:
    t = {"model.embed_tokens.weight": rand(VOCAB, D), "lm_head.weight": rand(VOCAB, D, seed=3)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t |= {p + "self_attn.qkv_proj.weight": labelled_qkv("contiguous", HEADS, kv_heads),
              p + "self_attn.o_proj.weight": rand(D, D, seed=i),
              p + "mlp.gate_up_proj.weight": torch.cat([torch.full((FF, D), 1.0), torch.full((FF, D), 2.0)])
              + 0.01 * rand(2 * FF, D, seed=i),
              p + "mlp.down_proj.weight": rand(D, FF, seed=i)}
    return t


def bert(layers: int = 2, prefix: str = "bert.") -> dict:
    t = {prefix + "embeddings.word_embeddings.weight": rand(VOCAB, D),
         prefix + "embeddings.position_embeddings.weight": rand(16, D),
         prefix + "embeddings.token_type_embeddings.weight": rand(2, D),
         prefix + "embeddings.position_ids": torch.arange(16)[None],
         prefix + "pooler.dense.weight": rand(D, D, seed=5), "cls.predictions.transform.dense.weight": rand(D, D, seed=6)}
    for i in range(layers):
        p = f"{prefix}encoder.layer.{i}."
        t |= {p + "attention.self.query.weight": rand(D, D, seed=i), p + "attention.self.key.weight": rand(D, D, seed=i + 1),
              p + "attention.self.value.weight": rand(D, D, seed=i + 2),
              p + "attention.output.dense.weight": rand(D, D, seed=i + 3),
              p + "attention.output.LayerNorm.weight": torch.ones(D),
              p + "intermediate.dense.weight": rand(4 * D, D, seed=i), p + "output.dense.weight": rand(D, 4 * D, seed=i)}
    return t


def opt(layers: int = 2) -> dict:
    t = {"model.decoder.embed_tokens.weight": rand(VOCAB, D), "model.decoder.embed_positions.weight": rand(18, D),
         "lm_head.weight": rand(VOCAB, D, seed=2)}
    for i in range(layers):
        p = f"model.decoder.layers.{i}."
        t |= {p + f"self_attn.{x}_proj.weight": rand(D, D, seed=i + j) for j, x in enumerate("qkv")}
        t |= {p + "self_attn.out_proj.weight": rand(D, D, seed=i), p + "fc1.weight": rand(4 * D, D, seed=i),
              p + "fc2.weight": rand(D, 4 * D, seed=i), p + "fc1.bias": torch.zeros(4 * D)}
    return t


def falcon(layout: str, kv_heads: int, layers: int = 2) -> dict:
    t = {"transformer.word_embeddings.weight": rand(VOCAB, D), "lm_head.weight": rand(VOCAB, D, seed=4)}
    for i in range(layers):
        p = f"transformer.h.{i}."
        t |= {p + "self_attention.query_key_value.weight": labelled_qkv(layout, HEADS, kv_heads),
              p + "self_attention.dense.weight": rand(D, D, seed=i),
              p + "mlp.dense_h_to_4h.weight": rand(4 * D, D, seed=i), p + "mlp.dense_4h_to_h.weight": rand(D, 4 * D, seed=i)}
    return t


def mixtral(layers: int = 1, experts: int = 3) -> dict:
    t = {"model.embed_tokens.weight": rand(VOCAB, D)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t |= {p + f"self_attn.{x}_proj.weight": rand(D, D, seed=j) for j, x in enumerate("qkvo")}
        t[p + "block_sparse_moe.gate.weight"] = rand(experts, D)
        for e in range(experts):
            q = f"{p}block_sparse_moe.experts.{e}."
            t |= {q + "w1.weight": rand(FF, D, seed=e), q + "w3.weight": rand(FF, D, seed=e + 1),
                  q + "w2.weight": rand(D, FF, seed=e)}
    return t


def fused_moe(layers: int = 1, experts: int = 3) -> dict:
    t = {"model.embed_tokens.weight": rand(VOCAB, D)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "mlp.gate.weight"] = rand(experts, D)
        t[p + "mlp.experts.gate_up_proj"] = rand(experts, 2 * FF, D)
        t[p + "mlp.experts.down_proj"] = rand(experts, D, FF)
    return t
