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
    """The overlapped refresh (side CUDA stream) gives the decays a CPU refresh of the same weights gives, also
    when stepped after close() (defect 3: the old test stepped a shut-down executor)."""
    from test_gpu_ready import overlapped_equals_synchronous

    overlapped_equals_synchronous("cuda")


def test_hook_snapshot_under_fsdp2_equals_the_plain_model(monkeypatch):
    """Defect 5: under FSDP2 the gathered full tensors are copied on the stream that gathered them; the
    overlapped refresh of a sharded model (one rank) equals a synchronous one of the same weights."""
    import socket

    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from alphaspec import AlphaDecay
    from alphaspec.train.model import Llama, ModelConfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(k, v)
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                          num_attention_heads=4)
        plain = Llama(cfg)
        sharded = Llama(cfg).cuda()
        sharded.load_state_dict(plain.state_dict())
        for block in sharded.model.layers:
            fully_shard(block)
        fully_shard(sharded)
        ref = AlphaDecay(plain, torch.optim.AdamW(plain.parameters(), weight_decay=0.1), gap=1, overlap=False)
        hook = AlphaDecay(sharded, torch.optim.AdamW(sharded.parameters(), weight_decay=0.1), gap=1, overlap=True,
                          warmup="uniform")
        for _ in range(3):
            hook.step()
            torch.cuda.synchronize()
        hook.close()
        assert hook.refreshes >= 1 and hook.failed_refreshes == 0
        assert hook.decays == pytest.approx(ref.decays, rel=1e-9)
    finally:
        dist.destroy_process_group()


def test_cuda_out_of_memory_is_one_error_line_with_every_thread_stopped(tmp_path):
    """Defect 7 on a real GPU: a solve that cannot get its memory is one error line naming the matrix."""
    from click.testing import CliRunner
    from safetensors.torch import save_file
    from test_gpu_ready import alive

    from alphaspec.cli import app

    save_file({"model.layers.0.mlp.up_proj.weight": torch.randn(8192, 8192)}, str(tmp_path / "model.safetensors"))
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(300e6 / total)  # the float32 matrix fits, its float64 Gram does not
    try:
        res = CliRunner().invoke(app, ["analyze", str(tmp_path / "model.safetensors"), "--device", "cuda", "-q",
                                       "-o", str(tmp_path / "r.json")], env={"COLUMNS": "200"})
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert "mlp.up_proj" in lines[0] and "out of memory" in lines[0] and "--workers 1" in lines[0], lines[0]
    assert not (tmp_path / "r.json").exists() and alive() == []


def test_peak_gpu_memory_of_a_tall_embedding_stays_near_its_own_size(tmp_path):
    """Defect 9: a 262144x640 bf16 embedding (335 MB) was stacked, checked into a bool copy and widened whole
    to float64 (1.3 GB): ~2.2 GB. Now a view, reductions and float64 blocks of rows: under 1.75 GB."""
    from safetensors.torch import save_file

    save_file({"model.embed_tokens.weight": (torch.randn(262144, 640) * 0.02).bfloat16()},
              str(tmp_path / "model.safetensors"))
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    table = analyze_checkpoint(tmp_path / "model.safetensors", device="cuda").table
    assert table["status"].tolist() == ["ok"]
    assert torch.cuda.max_memory_allocated() < 1.75e9, torch.cuda.max_memory_allocated() / 1e9


def test_solves_on_the_gpu_write_no_process_wide_setting(tmp_path, monkeypatch):
    """Defect 6: concurrent fp32 and fp64 solves never write the matmul precision or the TF32 flags."""
    writes = []
    real_setattr = type(torch.backends.cuda.matmul).__setattr__
    monkeypatch.setattr(torch, "set_float32_matmul_precision", lambda v: writes.append(("precision", v)))
    monkeypatch.setattr(type(torch.backends.cuda.matmul), "__setattr__",
                        lambda self, k, v: (writes.append((k, v)), real_setattr(self, k, v)))
    folder = synth.write(tmp_path, synth.llama(layers=3), synth.LLAMA_CONFIG)
    for precision in ("fp64", "fp32"):
        analyze_checkpoint(folder, device="cuda", workers=3, precision=precision)
    assert writes == []


def test_train_restores_the_processs_tf32_settings(tmp_path):
    """Defect 10: train() turned TF32 on for the process and left it on."""
    from alphaspec.train import TrainConfig, train

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    train(TrainConfig.of(out=str(tmp_path / "run"), device="auto", vocab_size=512, seq_len=32, batch_size=4, steps=2,
                         eval_every=2, log_every=1))
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_multiplier_statistics_on_the_gpu_equal_the_cpus():
    """Defect 2: the learnable multipliers' statistics with GPU weights (a CPU tensor met them before)."""
    from alphaspec.train.observe import multiplier_stats

    w, r, c = torch.randn(48, 32), torch.rand(48) + 0.5, torch.rand(32) + 0.5
    cpu = multiplier_stats(w, {"row_mult": r, "col_mult": c})
    gpu = multiplier_stats(w.cuda(), {"row_mult": r.cuda(), "col_mult": c.cuda()})
    assert gpu.is_cuda and torch.allclose(gpu.cpu(), cpu, rtol=1e-5)


@pytest.mark.parametrize("strategy", ["uniform", "alphadecay", "awd", "adadecay", "lrm", "tempbalance", "llr"])
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
    from alphaspec.sources.gguf_dequant import DEQUANTISERS, dequantise

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


def test_diagnoses_on_the_gpu_equal_the_cpus(tmp_path):
    """The MP columns, --randomize (permutations drawn on the CPU, so the same on every device) and the traps
    with their entries: CUDA and CPU agree."""
    tensors = synth.llama(layers=2, dtype=torch.float32)
    w = tensors["model.layers.1.mlp.up_proj.weight"].clone()
    w[3, 7], w[10, 2] = 40 * w.abs().max(), -35 * w.abs().max()  # planted trap entries
    tensors["model.layers.1.mlp.up_proj.weight"] = w
    folder = synth.write(tmp_path, tensors, synth.LLAMA_CONFIG)
    cpu = analyze_checkpoint(folder, device="cpu", randomize=True).table
    gpu = analyze_checkpoint(folder, device="cuda", randomize=True).table
    for col in ("sigma_mp", "bulk_max", "mp_softrank", "rand_lambda_max", "rand_distance"):
        assert gpu[col].tolist() == pytest.approx(cpu[col].tolist(), rel=1e-9, nan_ok=True), col
    for col in ("num_spikes", "traps", "trap_entries", "trap_where", "warning"):
        assert gpu[col].tolist() == cpu[col].tolist(), col


def test_a_model_on_the_gpu_is_analysed_where_it_is(tmp_path):
    """analyze(model) for a CUDA model: solved on its device (auto), the same rows as on the CPU."""
    import alphaspec

    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2))
    cpu = alphaspec.analyze(model)
    gpu = alphaspec.analyze(model.cuda())
    assert gpu.attrs["device"].startswith("cuda") and list(gpu["name"]) == list(cpu["name"])
    assert gpu["alpha"].tolist() == pytest.approx(cpu["alpha"].tolist(), rel=1e-9)


def test_diff_on_the_gpu_equals_the_cpu(tmp_path):
    from alphaspec.analysis.diff import diff_checkpoints

    a = synth.write(tmp_path / "a", synth.llama(layers=2, dtype=torch.float32), synth.LLAMA_CONFIG)
    changed = synth.llama(layers=2, dtype=torch.float32)
    changed["model.layers.0.mlp.up_proj.weight"] = changed["model.layers.0.mlp.up_proj.weight"] * 1.3
    b = synth.write(tmp_path / "b", changed, synth.LLAMA_CONFIG)
    cpu = diff_checkpoints([a, b], device="cpu").table
    gpu = diff_checkpoints([a, b], device="cuda").table
    for col in ("rel_change", "subspace_overlap", "delta_alpha"):
        assert gpu[col].tolist() == pytest.approx(cpu[col].tolist(), rel=1e-7, abs=1e-9, nan_ok=True), col


def test_alpha_lr_overlapped_on_cuda_equals_the_cpu_multipliers():
    """AlphaLR refreshed on a side CUDA stream gives the multipliers an in-line CPU refresh of the same weights
    gives, and the groups' LRs on the GPU carry them."""
    import transformers

    from alphaspec import AlphaLR

    def hooked(device: str, overlap: bool):
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4)).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        return AlphaLR(model, optimizer, method="llr", gap=1, overlap=overlap), optimizer

    cpu, _ = hooked("cpu", False)
    gpu, optimizer = hooked("cuda", True)
    gpu.step()
    gpu.close()
    assert gpu.scales == pytest.approx(cpu.scales, rel=1e-9)
    for group in optimizer.param_groups:
        if group.get("name") in gpu.scales:
            assert group["lr"] == pytest.approx(1e-3 * gpu.scales[group["name"]], rel=1e-12)


def test_a_sparsity_map_prunes_a_model_on_the_gpu_as_on_the_cpu(tmp_path):
    import transformers

    from alphaspec.maps.apply import prune_model
    from alphaspec.maps.build import build_map

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4))
    from alphaspec import analyze

    smap = build_map(analyze(model.to("cuda"), device="cuda", split_fused=False), "sparsity", target=0.5)
    on_gpu = prune_model(model, smap, permanent=True)
    assert (on_gpu["realised"] - on_gpu["sparsity"]).abs().max() <= 0.5 / on_gpu["params"].min()


def test_a_gguf_kept_from_the_gpu_is_neither_copied_nor_expanded_again(tmp_path, monkeypatch):
    """Blocks expanded on the GPU are keyed as stored (the store has no CPU copy of them to key): a second
    analysis on the GPU takes every matrix from the store and equals a fresh one."""
    import pandas as pd
    from test_store import quantised_gguf

    from alphaspec.sources import gguf as gguf_source

    monkeypatch.setenv("ALPHASPEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ALPHASPEC_NO_CACHE", raising=False)
    model = quantised_gguf(tmp_path / "m.gguf")
    analyze_checkpoint(model, device="cuda")
    expanded = []
    real = gguf_source.dequantise
    monkeypatch.setattr(gguf_source, "dequantise", lambda *a, **k: expanded.append(a[2]) or real(*a, **k))
    warm = analyze_checkpoint(model, "gof", device="cuda").table
    assert expanded == []
    pd.testing.assert_frame_equal(warm, analyze_checkpoint(model, "gof", device="cuda", cache=False).table)
