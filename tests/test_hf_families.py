"""Checkpoints saved by transformers itself (tiny configs): real tensor names of each family, typed right."""

import pytest
import torch

from alphaspec import analyze_checkpoint

transformers = pytest.importorskip("transformers")

H = {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 100}
ATT = {"att.q": 2, "att.k": 2, "att.v": 2, "att.o": 2}
GATED = ATT | {"mlp.gate": 2, "mlp.up": 2, "mlp.down": 2}
PLAIN = ATT | {"mlp.up": 2, "mlp.down": 2}
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", H | {"num_key_value_heads": 2}, GATED),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", H | {"num_key_value_heads": 2}, GATED),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", H | {"num_key_value_heads": 2, "head_dim": 16}, GATED),
    "mistral": ("MistralConfig", "MistralForCausalLM", H | {"num_key_value_heads": 2}, GATED),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", H | {"num_key_value_heads": 2, "pad_token_id": 0}, GATED),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"n_embd": 64, "n_head": 4, "n_layer": 2, "vocab_size": 100,
                                               "n_positions": 32}, PLAIN),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", H, PLAIN),
    "opt": ("OPTConfig", "OPTForCausalLM", {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
                                            "ffn_dim": 128, "vocab_size": 100, "word_embed_proj_dim": 64}, PLAIN),
    "falcon": ("FalconConfig", "FalconForCausalLM", {"hidden_size": 64, "num_attention_heads": 4,
                                                     "num_hidden_layers": 2, "vocab_size": 100}, PLAIN),
    "falcon_new": ("FalconConfig", "FalconForCausalLM", {"hidden_size": 64, "num_attention_heads": 4,
                                                         "num_hidden_layers": 2, "vocab_size": 100,
                                                         "new_decoder_architecture": True, "num_kv_heads": 2}, PLAIN),
    "bloom": ("BloomConfig", "BloomForCausalLM", {"hidden_size": 64, "n_head": 4, "n_layer": 2, "vocab_size": 100},
              PLAIN),
    "bert": ("BertConfig", "BertModel", H, PLAIN),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", H | {"num_key_value_heads": 2, "num_local_experts": 4,
                                                           "num_experts_per_tok": 2},
                ATT | {"mlp.gate": 8, "mlp.up": 8, "mlp.down": 8, "other": 2}),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_transformers_checkpoint(tmp_path, family):
    config_cls, model_cls, kwargs, expected = FAMILIES[family]
    config = getattr(transformers, config_cls)(**kwargs)
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config)
    model.save_pretrained(tmp_path)
    result = analyze_checkpoint(tmp_path, device="cpu")
    table = result.table
    blocks = table[table["layer"].notna()]
    assert blocks["module"].value_counts().to_dict() == expected
    assert result.notes == []
    assert (blocks.loc[blocks["module"] != "other", "status"] == "ok").all()  # routers have few eigenvalues
    # every 2-D parameter of the model is analysed with the shape nn.Linear gives it
    params = dict(model.named_parameters())
    for row in blocks.itertuples():
        if row.name in params:  # (transformers 5 saves fused MoE experts under their legacy per-expert names)
            weight = params[row.name]
            linear = isinstance(model.get_submodule(row.name.rsplit(".", 1)[0]), torch.nn.Linear)
            shape = tuple(weight.shape) if linear else tuple(weight.shape)[::-1]  # GPT-2 Conv1D stores (in, out)
            assert (row.rows, row.cols) == shape, row.name
    assert {s.reason for s in result.skipped} <= {"1-D tensor (bias or norm gain)"}
