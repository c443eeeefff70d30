"""CPU and CUDA give the same numbers (run on a GPU machine; skipped where there is none)."""

import pytest
import synth
import torch

from alphaspec import run

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.mark.parametrize("estimator", ["median", "gof", "fix-finger"])
def test_cpu_and_cuda_alphas_agree(tmp_path, estimator):
    tensors = synth.llama(layers=2, dtype=torch.bfloat16)
    tensors["model.layers.0.mlp.up_proj.weight"] = synth.rand(1536, 384, dtype=torch.bfloat16)
    tensors["model.layers.0.mlp.down_proj.weight"] = synth.rand(384, 1536, dtype=torch.bfloat16)
    folder = synth.write(tmp_path, tensors, synth.LLAMA_CONFIG)
    cpu = run(folder, estimator=estimator, device="cpu").table
    gpu = run(folder, estimator=estimator, device="cuda").table
    assert list(cpu["name"]) == list(gpu["name"])
    for col in ("alpha", "xmin", "ks_d", "lambda_max", "stable_rank", "entropy"):
        assert gpu[col].tolist() == pytest.approx(cpu[col].tolist(), rel=1e-9), col
    assert (cpu["n_tail"] == gpu["n_tail"]).all()
