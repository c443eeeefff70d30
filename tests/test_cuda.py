"""CPU and CUDA give the same numbers (run on a GPU machine; skipped where there is none)."""

import pytest
import synth
import torch

from alphaspec import analyze_checkpoint

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.mark.parametrize("estimator", ["median", "gof", "fix-finger"])
def test_cpu_and_cuda_alphas_agree(tmp_path, estimator):
    tensors = synth.llama(layers=2, dtype=torch.bfloat16)
    tensors["model.layers.0.mlp.up_proj.weight"] = synth.rand(1536, 384, dtype=torch.bfloat16)
    tensors["model.layers.0.mlp.down_proj.weight"] = synth.rand(384, 1536, dtype=torch.bfloat16)
    folder = synth.write(tmp_path, tensors, synth.LLAMA_CONFIG)
    cpu = analyze_checkpoint(folder, estimator=estimator, device="cpu").table
    gpu = analyze_checkpoint(folder, estimator=estimator, device="cuda").table
    assert list(cpu["name"]) == list(gpu["name"])
    for col in ("alpha", "xmin", "ks_d", "lambda_max", "stable_rank", "entropy"):
        assert gpu[col].tolist() == pytest.approx(cpu[col].tolist(), rel=1e-9), col
    assert (cpu["n_tail"] == gpu["n_tail"]).all()


def test_hook_overlapped_on_cuda_equals_cpu_decays():
    """The overlapped refresh (side CUDA stream) gives the decays a CPU refresh of the same weights gives."""
    from alphaspec import AlphaDecay
    from alphaspec.train.model import Llama, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
    model = Llama(cfg)
    gpu_model = Llama(cfg).cuda()
    gpu_model.load_state_dict(model.state_dict())
    cpu_model = Llama(cfg)
    cpu_model.load_state_dict(model.state_dict())
    cpu_opt = torch.optim.AdamW(cpu_model.parameters(), lr=1e-3, weight_decay=0.1)
    gpu_opt = torch.optim.AdamW(gpu_model.parameters(), lr=1e-3, weight_decay=0.1)
    cpu_hook = AlphaDecay(cpu_model, cpu_opt, gap=1, overlap=False)
    gpu_hook = AlphaDecay(gpu_model, gpu_opt, gap=1, overlap=True)
    gpu_hook.close()
    assert gpu_hook.decays == pytest.approx(cpu_hook.decays, rel=1e-9)
    gpu_hook.step()
    gpu_hook.close()
    assert gpu_hook.refreshes == 2 and gpu_hook.decays == pytest.approx(cpu_hook.decays, rel=1e-9)


@pytest.mark.parametrize("strategy", ["uniform", "alphadecay", "awd", "adadecay", "lrm"])
def test_train_on_cuda(tmp_path, strategy):
    """Every strategy trains on the GPU (bf16 autocast, fused AdamW) and close to the CPU's fp32 numbers."""
    from alphaspec.train import TrainConfig, train

    common = dict(vocab_size=512, seq_len=32, batch_size=8, steps=6, eval_every=3, log_every=3, strategy=strategy, gap=3)
    gpu = train(TrainConfig.of(out=str(tmp_path / "gpu"), device="cuda", **common))
    cpu = train(TrainConfig.of(out=str(tmp_path / "cpu"), device="cpu", **common))
    assert gpu["step"] == 6 and gpu["loss"] == pytest.approx(cpu["loss"], rel=2e-2)
    assert gpu["eval_loss"] == pytest.approx(cpu["eval_loss"], rel=2e-2)


def test_fp32_on_cuda_stays_within_the_measured_error_of_fp64(tmp_path):
    """--precision fp32 on the GPU (TF32 off inside the solve even when the process allows it)."""
    tensors = synth.llama(layers=2, dtype=torch.bfloat16)
    tensors["model.layers.0.mlp.up_proj.weight"] = synth.rand(1536, 384, dtype=torch.bfloat16)
    folder = synth.write(tmp_path, tensors, synth.LLAMA_CONFIG)
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        fp64 = analyze_checkpoint(folder, device="cuda").table
        fp32 = analyze_checkpoint(folder, device="cuda", precision="fp32").table
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
    assert fp32["alpha"].tolist() == pytest.approx(fp64["alpha"].tolist(), abs=1e-4)


def test_torchrun_two_ranks_with_nccl_on_the_gpus_there_are(tmp_path):
    """Two ranks under torchrun (sharing GPU 0 when there is one): the NCCL default group, the gloo side
    group that carries the results, and the gather, on real GPUs."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    folder = synth.write(tmp_path / "m", synth.llama(layers=2), synth.LLAMA_CONFIG)
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parent.parent)}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                          "alphaspec", "analyze", str(folder), "-o", str(tmp_path / "r.json"), "-q"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads((tmp_path / "r.json").read_text())["matrices"]
    want = analyze_checkpoint(folder, device="cuda").table
    assert [r["name"] for r in rows] == list(want["name"])
    assert [r["alpha"] for r in rows] == pytest.approx(want["alpha"].tolist(), rel=1e-9)


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"])
def test_gguf_blocks_dequantised_on_the_gpu_equal_the_cpu(kind):
    from alphaspec.gguf_dequant import DEQUANTISERS, dequantise

    block, size, _ = DEQUANTISERS[kind]
    raw = torch.randint(0, 256, (16, 4 * size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    blocks = raw.view(16, 4, size)
    for at in (0, 2, 208):  # every float16 scale position of these types: finite values
        if at + 2 <= size:
            blocks[..., at:at + 2] = (torch.rand(16, 4, 1) * 0.1 - 0.05).half().view(torch.uint8)
    cpu = dequantise(raw, kind, (16, 4 * block), rows_per_chunk=3)
    gpu = dequantise(raw.cuda(), kind, (16, 4 * block), rows_per_chunk=3)
    assert torch.equal(gpu.cpu(), cpu)


def test_quantised_gguf_analysed_on_the_gpu_equals_the_cpu(tmp_path):
    """Blocks expanded on the GPU (reader's copy stream) give the CPU's table, with concurrent solvers too."""
    import numpy as np
    from gguf import GGMLQuantizationType as T
    from test_gguf import LLAMA_META, LLAMA_NAMES, llama_tensors, write_gguf

    tensors = {LLAMA_NAMES[k]: v for k, v in llama_tensors().items()}
    write_gguf(tmp_path / "m.gguf", "llama", tensors, T.Q8_0, LLAMA_META)
    cpu = analyze_checkpoint(tmp_path / "m.gguf", device="cpu", keep_spectra=True)
    for workers in (1, 3):
        gpu = analyze_checkpoint(tmp_path / "m.gguf", device="cuda", keep_spectra=True, workers=workers)
        assert gpu.table["alpha"].tolist() == pytest.approx(cpu.table["alpha"].tolist(), rel=1e-9)
        for name, eigs in cpu.spectra.items():
            np.testing.assert_allclose(gpu.spectra[name], eigs, rtol=1e-9, atol=1e-12 * eigs.max())
