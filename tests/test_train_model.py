"""The trainer's LLaMA is transformers' LlamaForCausalLM: same names, same logits; multipliers fold exactly."""

import pytest
import torch

from alphaspec.train.model import LRM_MODES, Llama, ModelConfig, count_params, is_multiplier

transformers = pytest.importorskip("transformers")


def hf_model(model: Llama):
    config = transformers.LlamaConfig(**model.config.hf_config())
    hf = transformers.LlamaForCausalLM(config).eval()
    missing, unexpected = hf.load_state_dict(model.hf_state_dict(), strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()  # shared with embed_tokens
    assert not unexpected and all("rotary" in m or m in tied for m in missing)
    return hf


@pytest.mark.parametrize("kv_heads,tied", [(4, False), (2, False), (1, True)])
def test_logits_equal_transformers(kv_heads, tied):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=kv_heads, max_position_embeddings=32, tie_word_embeddings=tied)
    model = Llama(cfg).eval()
    ids = torch.randint(0, 97, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(ids), hf_model(model)(ids).logits
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)
    assert count_params(model) == sum(p.numel() for p in hf_model(model).parameters())


@pytest.mark.parametrize("mode", ["vector", "full", "scalar"])
def test_multipliers_fold_into_an_ordinary_llama(mode):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
    model = Llama(cfg, lrm=mode).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_multiplier(name):
                p.uniform_(0.5, 1.5)
    ids = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_model(model)(ids).logits, atol=2e-5, rtol=1e-4)
    assert not any(is_multiplier(n) for n in model.hf_state_dict())


def test_multiplier_placement():
    cfg = ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4)
    names = {n for n, _ in Llama(cfg, lrm="vector").named_parameters() if is_multiplier(n)}
    expected = {f"model.layers.0.{m}.row_mult" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                          "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")}
    assert names == expected | {"model.layers.0.mlp.down_proj.col_mult"}
    assert not any(is_multiplier(n) for n, _ in Llama(cfg).named_parameters())
    scalars = {n for n, _ in Llama(cfg, lrm="scalar").named_parameters() if is_multiplier(n)}
    assert len(scalars) == 7 and all(n.endswith(".scale") for n in scalars)
    assert set(LRM_MODES) == {"none", "vector", "full", "scalar"}


def test_config_json_is_a_llama_config(tmp_path):
    cfg = ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2)
    hf = transformers.LlamaConfig(**cfg.hf_config())
    assert (hf.hidden_size, hf.num_hidden_layers, hf.num_key_value_heads, hf.vocab_size) == (32, 3, 2, 61)
    with pytest.raises(ValueError):
        ModelConfig(hidden_size=30, num_attention_heads=4)


@pytest.mark.parametrize("width", [64, 128])
def test_mup_multipliers_are_the_closed_forms_and_fold_into_an_ordinary_llama(width):
    """Base width 64: at width 64 m = 1, at 128 m = 2. Attention logits q.k / d_head (SDPA's 1/sqrt(d_head)
    times 1/sqrt(d_head) on q); output logits / m; hidden matrices learn at lr / m, the rest at lr."""
    from alphaspec.train.config import TrainConfig
    from alphaspec.train.strategies import make_strategy

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=61, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                      num_attention_heads=4)
    m, head_dim = width / 64, width / 4
    model = Llama(cfg, mup_width_mult=m).eval()
    assert float(model.logit_mult) == 1 / m
    assert float(model.model.layers[0].self_attn.q_mult) == pytest.approx(head_dim ** -0.5, rel=1e-7)  # float32
    ids = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = Llama(cfg).eval()
        plain.load_state_dict(model.state_dict(), strict=False)  # same weights, no muP
        assert not torch.allclose(model(ids), plain(ids))
        torch.testing.assert_close(model(ids), hf_model(model)(ids).logits, atol=2e-5, rtol=1e-4)
    assert not any(n.endswith(("q_mult", "logit_mult")) for n in model.hf_state_dict())
    groups = make_strategy(TrainConfig.of(strategy="mup", lr=1e-2, mup_base_width=64)).param_groups(model)
    lrs = {g["name"]: g.get("lr", 1e-2) for g in groups}
    assert lrs["matrices"] == pytest.approx(1e-2 / m) and lrs["untuned"] == 1e-2
