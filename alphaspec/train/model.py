"""A LLaMA decoder with Hugging Face `LlamaForCausalLM` parameter names, and optional learnable multipliers.

The weights it saves load in transformers unchanged (same names, same RoPE convention), so a training
run is also an ordinary HF checkpoint that `alphaspec analyze` reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from alphaspec.choices import MODELS


@dataclass
class ModelConfig:
    """The LlamaConfig fields this model honours (names as in transformers)."""

    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 256
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self):
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("hidden_size must divide into num_attention_heads, and those into num_key_value_heads")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def hf_config(self) -> dict:
        """This model as a transformers LlamaConfig dict (config.json)."""
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
                "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32", **asdict(self)}


# Shapes of GaLore's LLaMA family (the AlphaDecay paper's models), plus small ones for CPUs and tests.
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4),
    "llama-20m": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4),
    "llama-60m": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8),
    "llama-130m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12),
    "llama-350m": dict(hidden_size=1024, intermediate_size=2736, num_hidden_layers=24, num_attention_heads=16),
    "llama-1b": dict(hidden_size=2048, intermediate_size=5461, num_hidden_layers=24, num_attention_heads=32),
}

assert tuple(PRESETS) == MODELS  # the names the config offers

# Learnable-multiplier placements (docs/math.md §5; docs/train.md explains the symmetries they avoid).
# Per module: (row multipliers, column multipliers). "vector" keeps one factor of every redundant pair:
# no column multipliers behind a norm gain, none on up (rows of up ~ columns of down), none on o
# (columns of o ~ rows of v); q-rows x k-rows stays redundant and is held by the multipliers' decay.
LRM_MODES = {
    "none": {},
    "vector": {"q_proj": (True, False), "k_proj": (True, False), "v_proj": (True, False), "o_proj": (True, False),
               "gate_proj": (True, False), "up_proj": (False, False), "down_proj": (True, True)},
    "full": {m: (True, True) for m in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")},
    "scalar": {m: (False, False) for m in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")},
}
MULTIPLIER_NAMES = ("row_mult", "col_mult", "scale")
MUP_BUFFERS = ("q_mult", "logit_mult")  # muP's fixed multipliers (buffers, folded into q_proj and lm_head on save)


class Linear(nn.Linear):
    """nn.Linear without bias, optionally reparametrised as W_eff = s * diag(r) W diag(c) (all start at 1)."""

    def __init__(self, fan_in: int, fan_out: int, rows: bool = False, cols: bool = False, scale: bool = False):
        super().__init__(fan_in, fan_out, bias=False)
        self.row_mult = nn.Parameter(torch.ones(fan_out)) if rows else None
        self.col_mult = nn.Parameter(torch.ones(fan_in)) if cols else None
        self.scale = nn.Parameter(torch.ones(1)) if scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.col_mult is not None:
            x = x * self.col_mult.to(x.dtype)
        y = F.linear(x, self.weight)
        if self.row_mult is not None:
            y = y * self.row_mult.to(y.dtype)
        if self.scale is not None:
            y = y * self.scale.to(y.dtype)
        return y


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in transformers' rotate-half convention (first half pairs with second half)."""
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-b, a), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, lrm: dict, mup: bool = False):
        super().__init__()
        d, hd = cfg.hidden_size, cfg.head_dim
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, hd
        self.q_proj = _linear(d, cfg.num_attention_heads * hd, "q_proj", lrm)
        self.k_proj = _linear(d, cfg.num_key_value_heads * hd, "k_proj", lrm)
        self.v_proj = _linear(d, cfg.num_key_value_heads * hd, "v_proj", lrm)
        self.o_proj = _linear(cfg.num_attention_heads * hd, d, "o_proj", lrm)
        if mup:  # muP's attention logits q.k / d_head: SDPA's 1 / sqrt(d_head) times this on q
            self.register_buffer("q_mult", torch.tensor(hd ** -0.5))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x)
        q = (q * self.q_mult if hasattr(self, "q_mult") else q).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, lrm: dict):
        super().__init__()
        self.gate_proj = _linear(cfg.hidden_size, cfg.intermediate_size, "gate_proj", lrm)
        self.up_proj = _linear(cfg.hidden_size, cfg.intermediate_size, "up_proj", lrm)
        self.down_proj = _linear(cfg.intermediate_size, cfg.hidden_size, "down_proj", lrm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, lrm: dict, mup: bool = False):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, lrm, mup)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg, lrm)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig, lrm: dict, mup: bool = False):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, lrm, mup) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Llama(nn.Module):
    """LlamaForCausalLM's structure: `model.embed_tokens`, `model.layers.N.{self_attn,mlp}.*_proj`, `lm_head`."""

    def __init__(self, cfg: ModelConfig, lrm: str = "none", mup_width_mult: float | None = None):
        """lrm: learnable-multiplier placement. mup_width_mult: width / base width for muP's fixed multipliers
        (attention logits over d_head, output logits over the width multiplier; docs/math.md §5)."""
        super().__init__()
        if lrm not in LRM_MODES:
            raise ValueError(f"unknown multiplier mode {lrm!r}; choose one of {', '.join(LRM_MODES)}")
        if mup_width_mult is not None and cfg.tie_word_embeddings:
            raise ValueError("muP's output multiplier needs an untied lm_head")
        self.config, self.lrm = cfg, lrm
        placement = {k: (*v, lrm == "scalar") for k, v in LRM_MODES[lrm].items()}
        self.model = Decoder(cfg, placement, mup_width_mult is not None)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        if mup_width_mult is not None:
            self.register_buffer("logit_mult", torch.tensor(1.0 / mup_width_mult))
        inv = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
        self.register_buffer("inv_freq", inv, persistent=False)
        self.apply(self._init)

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=self.config.initializer_range)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (batch, seq, vocab) for token ids (batch, seq)."""
        t = ids.shape[1]
        freqs = torch.outer(torch.arange(t, device=ids.device, dtype=torch.float32), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        x = self.model.embed_tokens(ids)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        logits = self.lm_head(self.model.norm(x))
        return logits * self.logit_mult if hasattr(self, "logit_mult") else logits

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under LlamaForCausalLM names, multipliers folded in, contiguous fp32 on the CPU."""
        return hf_tensors(self.state_dict(), self.config.tie_word_embeddings)


def hf_names(state: dict[str, torch.Tensor], tied: bool = False) -> list[str]:
    """The LlamaForCausalLM tensor names of a (full, unsharded) Llama state dict: its tensors without the
    multipliers (folded into their weights by hf_tensor), and without lm_head when tied to the embedding."""
    return [name for name in state if not (_is_folded_away(name) or (tied and name == "lm_head.weight"))]


def _is_folded_away(name: str) -> bool:
    leaf = name.rpartition(".")[2]
    return leaf in MULTIPLIER_NAMES or leaf in MUP_BUFFERS or name in MUP_BUFFERS


def hf_tensor(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """One tensor as LlamaForCausalLM holds it, float32, with its multipliers folded in:
    W_eff = s * diag(r) W diag(c), and muP's fixed ones into q_proj and lm_head."""
    prefix, _, leaf = name.rpartition(".")
    w = state[name].detach().float()
    if leaf == "weight":
        if f"{prefix}.row_mult" in state:
            w = w * state[f"{prefix}.row_mult"].float()[:, None]
        if f"{prefix}.col_mult" in state:
            w = w * state[f"{prefix}.col_mult"].float()[None, :]
        if f"{prefix}.scale" in state:
            w = w * state[f"{prefix}.scale"].float()
        fixed = f"{prefix.rpartition('.')[0]}.q_mult" if prefix.endswith("q_proj") else (
            "logit_mult" if name == "lm_head.weight" else None)
        if fixed in state:
            w = w * state[fixed].float()
    return w.cpu().contiguous()


def hf_tensors(state: dict[str, torch.Tensor], tied: bool = False) -> dict[str, torch.Tensor]:
    """A (full, unsharded) Llama state dict as LlamaForCausalLM tensors (hf_names, each by hf_tensor)."""
    return {name: hf_tensor(state, name) for name in hf_names(state, tied)}


def _linear(fan_in: int, fan_out: int, kind: str, placement: dict) -> Linear:
    rows, cols, scale = placement.get(kind, (False, False, False))
    return Linear(fan_in, fan_out, rows, cols, scale)


def is_multiplier(name: str) -> bool:
    """A learnable multiplier parameter (row, column or scalar) of a reparametrised matrix."""
    return name.rsplit(".", 1)[-1] in MULTIPLIER_NAMES


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def model_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (6N for the matrices plus attention), as in the PaLM/nanoGPT MFU estimate."""
    n = cfg.num_hidden_layers * (2 * cfg.hidden_size * cfg.head_dim * (cfg.num_attention_heads + cfg.num_key_value_heads)
                                 + 3 * cfg.hidden_size * cfg.intermediate_size) + cfg.vocab_size * cfg.hidden_size
    return 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len

