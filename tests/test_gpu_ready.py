"""The CUDA-only paths, proven on the CPU as far as their logic allows: a fake CUDA runtime for device
selection, the `meta` device for tensors made on the wrong device, fake streams for the hook's
snapshot, injected solver failures, and bounded memory. Each test's name says which CUDA-only mistake it
guards against (numbered 1-10 for cross-reference); tests/test_cuda.py holds their CUDA twins.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import synth
import torch
from click.testing import CliRunner

from alphaspec import AlphaDecay, devices
from alphaspec.analysis import engine, solve
from alphaspec.cli import app
from alphaspec.spectra import eigenvalues as esd

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake_cuda(monkeypatch):
    """Two fake GPUs: set_device insists on an index, as torch's does for a torch.device."""
    calls = {"set_device": [], "current": 0}

    def set_device(device):
        if isinstance(device, torch.device) and device.index is None:
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
        calls["set_device"].append(device)
        calls["current"] = device.index if isinstance(device, torch.device) else int(device)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: calls["current"])
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    return calls


# --- 1 and 10: device selection, TF32 restored ------------------------------------------------------------------


def test_defect1_a_single_gpu_run_selects_an_indexed_device_and_sets_it(fake_cuda):
    from alphaspec.train.placement import on_device, select_device

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    for asked in ("auto", "cuda"):
        device = select_device(asked, world=1, local=0)
        assert device == torch.device("cuda", 0)
        with on_device(device):  # torch.cuda.set_device(torch.device("cuda")) raised here
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        # defect 10: train() left TF32 on for the whole process after it returned
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    assert select_device("auto", world=2, local=1) == torch.device("cuda", 1)  # torchrun: the local rank's GPU
    assert fake_cuda["set_device"][0] == torch.device("cuda", 0)


def test_defect10_solver_streams_get_the_current_device_index_in_any_thread(fake_cuda):
    """A thread's current device starts at 0: an index-less `cuda` in a solver thread named GPU 0 after
    set_device(1) in the main thread. resolve_device gives the index of the caller's device."""
    torch.cuda.set_device(1)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(devices.resolve_device("auto")))
    main = devices.resolve_device("cuda")
    thread.start()
    thread.join()
    assert main == torch.device("cuda", 1) and seen[0].index is not None
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(devices.DeviceError, match="only 2 CUDA device"):
        devices.resolve_device("cuda:2")


# --- 2: learnable multipliers on the weights' device -------------------------------------------------------------


def test_defect2_multiplier_statistics_are_made_on_the_weights_device():
    """`torch.ones(1)` (a CPU tensor) met the GPU weights of every --strategy lrm run at step 0. On the
    meta device a tensor made on the wrong device raises the same mismatch."""
    from alphaspec.train.model import Linear, Llama, ModelConfig
    from alphaspec.train.observe import multiplier_stats

    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4)
    with torch.device("meta"):
        model = Llama(cfg, lrm="full")
    checked = 0
    for module in model.modules():
        if isinstance(module, Linear) and getattr(module, "row_mult", None) is not None:
            values = {k: getattr(module, k).detach() for k in ("row_mult", "col_mult", "scale")
                      if getattr(module, k, None) is not None}
            stats = multiplier_stats(module.weight.detach(), values)
            assert stats.device.type == "meta" and stats.shape == (1 + len(values), 4)
            checked += 1
    assert checked
    # and on the CPU the numbers are the hand-computed ones
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    r, c, s = torch.tensor([2.0, 1.0]), torch.tensor([1.0, 0.5]), torch.tensor(3.0)
    stats = multiplier_stats(w, {"row_mult": r, "col_mult": c, "scale": s})
    eff = 3.0 * np.array([[2.0, 2.0], [3.0, 2.0]])
    assert stats[0, :2].tolist() == pytest.approx([np.sqrt(30.0), np.linalg.norm(eff)])
    assert stats[1].tolist() == pytest.approx([1.5, np.std([2.0, 1.0], ddof=1), 1.0, 2.0])
    assert stats[3].tolist() == pytest.approx([3.0, 0.0, 3.0, 3.0])


# --- 3: the overlapped hook, closed and stepped again -------------------------------------------------------------


def overlapped_equals_synchronous(device: str) -> None:
    """The overlapped refresh gives the decays a synchronous refresh of the same weights gives, also when
    stepped after close() (the test on the GPU called step() on a shut-down executor and could never pass)."""
    from alphaspec.train.model import Llama, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
    model = Llama(cfg)
    ref_model, model_on = Llama(cfg), Llama(cfg).to(device)
    ref_model.load_state_dict(model.state_dict())
    model_on.load_state_dict(model.state_dict())
    ref = AlphaDecay(ref_model, torch.optim.AdamW(ref_model.parameters(), weight_decay=0.1), gap=1, overlap=False)
    hook = AlphaDecay(model_on, torch.optim.AdamW(model_on.parameters(), weight_decay=0.1), gap=1, overlap=True)
    hook.close()
    assert hook.decays == pytest.approx(ref.decays, rel=1e-9)
    hook.step()
    hook.close()
    assert hook.refreshes == 2 and hook.decays == pytest.approx(ref.decays, rel=1e-9)
    assert not [t for t in threading.enumerate() if t.name.startswith("alphadecay")]


def test_defect3_the_overlapped_hook_steps_after_close_on_the_cpu():
    overlapped_equals_synchronous("cpu")


# --- 5: the snapshot under FSDP2 ----------------------------------------------------------------------------------


class FakeStream:
    """Enough of torch.cuda.Stream/Event for the hook's snapshot: which stream is current, per thread."""

    current = threading.local()

    def __init__(self, name="side", device=None):
        self.name, self.device, self.waited = name, torch.device("cuda", 0), []

    def wait_event(self, event):
        self.waited.append(event)

    def record(self, stream):
        self.recorded_on = stream.name


class Gathered(torch.Tensor):
    """A full tensor as FSDP2 gathers it: made on the stream current at the gather. Records, on every
    clone, the stream the copy ran on, and every stream it was recorded on."""

    log: list = []

    def clone(self, *args, **kwargs):
        Gathered.log.append(("clone", self.made_on, current_stream().name))
        return torch.Tensor.clone(torch.Tensor._make_subclass(torch.Tensor, self), *args, **kwargs)


def current_stream(device=None):
    return getattr(FakeStream.current, "stream", DEFAULT)


DEFAULT = FakeStream("default")


def test_defect5_snapshot_copies_run_on_the_stream_of_the_gather(monkeypatch):
    """Under FSDP2 the gathered full tensor was cloned on the side stream while the training stream freed
    it and could reuse its memory for the next gather. The copies now run on the gathering stream, and
    the side stream waits for an event recorded after them; the copies are recorded on the side stream."""
    import alphaspec.maps.hook as hook_module
    from alphaspec.train.model import Llama, ModelConfig

    @contextlib.contextmanager
    def use(stream):
        before = current_stream()
        FakeStream.current.stream = stream
        try:
            yield
        finally:
            FakeStream.current.stream = before

    recorded = []
    monkeypatch.setattr(torch.cuda, "stream", use)
    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Event", lambda: FakeStream("event"))
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, s: recorded.append(s.name), raising=False)

    def gather(p):
        g = torch.Tensor._make_subclass(Gathered, p.detach().clone())
        g.made_on = current_stream().name
        return g

    monkeypatch.setattr(hook_module, "full_tensor", gather)
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4)
    model = Llama(cfg)
    hook = AlphaDecay(model, torch.optim.AdamW(model.parameters(), weight_decay=0.1), gap=1, overlap=True,
                      warmup="uniform")
    hook._stream = side = FakeStream("side")
    Gathered.log.clear()
    hook.step()
    hook.close()
    assert Gathered.log and all(made == copied for _, made, copied in Gathered.log), Gathered.log
    assert len(side.waited) == 1 and side.waited[0].recorded_on == "default"
    assert recorded == ["side"] * len(hook.tuned) and hook.refreshes == 1


# --- 7: solver failures -------------------------------------------------------------------------------------------


def alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("alphaspec-reader", "alphaspec-solver"))]


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("failure", ["oom", "linalg"])
def test_defect7_a_failed_solve_is_one_error_line_with_every_thread_stopped(tmp_path, monkeypatch, workers, failure):
    folder = synth.write(tmp_path / "m", synth.llama(layers=3), synth.LLAMA_CONFIG)
    real = solve.scaled_eigenvalues

    def fail_on_down_proj(w, device=None, precision="fp64"):
        if w.shape[-2:] == (synth.D, synth.FF):
            if failure == "oom":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            raise torch.linalg.LinAlgError("linalg.eigvalsh: The algorithm failed to converge")
        return real(w, device, precision)

    monkeypatch.setattr(solve, "scaled_eigenvalues", fail_on_down_proj)
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["analyze", str(folder), "-o", str(out), "-q", "--workers", str(workers)],
                             env={"COLUMNS": "200"})
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert str(folder) in lines[0] and "mlp.down_proj" in lines[0] and "Traceback" not in res.output
    assert ("out of memory" in lines[0] and "--workers 1" not in lines[0]) if failure == "oom" else (
        "did not converge" in lines[0])
    assert not out.exists() and alive() == []


def test_defect7_a_reader_stopped_early_drops_what_it_staged(tmp_path):
    """The reader thread kept running, holding staged matrices, after the solver raised."""
    from alphaspec.sources.checkpoint import open_checkpoint
    from alphaspec.sources.read_ahead import read_ahead

    folder = synth.write(tmp_path / "m", synth.llama(layers=3), synth.LLAMA_CONFIG)
    ckpt = open_checkpoint(folder)
    todo = solve.plan_checkpoint(ckpt, (), (), True)
    stop = threading.Event()
    staged = read_ahead(ckpt, todo.matrices, stop, max_bytes=1)
    next(staged)
    staged.close()
    assert stop.is_set() and alive() == []


def test_defect7_a_failed_refresh_keeps_the_decays_and_warns_once(monkeypatch, caplog):
    import alphaspec.maps.hook as hook_module
    from alphaspec.train.model import Llama, ModelConfig

    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
    model = Llama(cfg)
    hook = AlphaDecay(model, torch.optim.AdamW(model.parameters(), weight_decay=0.1), gap=1, overlap=True)
    before = dict(hook.decays)

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(hook_module, "analyze_tensors", oom)
    with caplog.at_level(logging.WARNING, logger="alphaspec"):
        for _ in range(3):
            hook.step()
            hook.close()  # lands the refresh in flight
    assert hook.decays == before and hook.refreshes == 1 and hook.failed_refreshes == 3
    warned = [r.getMessage() for r in caplog.records if "AlphaDecay: the refresh" in r.getMessage()]
    assert len(warned) == 1 and "out of memory" in warned[0] and "keeping the decays" in warned[0]
    assert [g["weight_decay"] for g in hook.groups.values()] == list(before.values())


# --- 8: the esd benchmark -------------------------------------------------------------------------------------------


def test_defect8_magma_is_timed_only_where_torch_has_it(monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import esd as bench_esd
    finally:
        sys.path.remove(str(ROOT / "bench"))
    monkeypatch.setattr(torch.cuda, "has_magma", False, raising=False)
    assert bench_esd.linalg_libraries(torch.device("cuda", 0)) == ["default"]
    monkeypatch.setattr(torch.cuda, "has_magma", True, raising=False)
    assert bench_esd.linalg_libraries(torch.device("cuda", 0)) == ["default", "magma"]
    assert bench_esd.linalg_libraries(torch.device("cpu")) == ["default"]


# --- 9: memory ------------------------------------------------------------------------------------------------------


def test_defect9_a_batch_of_one_is_solved_without_a_stacked_copy(monkeypatch):
    stacked = []
    real_stack = torch.stack
    monkeypatch.setattr(torch, "stack", lambda ts, *a, **k: stacked.append(len(ts)) or real_stack(ts, *a, **k))
    w = synth.rand(96, 64)
    table = engine.analyze_tensors({"model.layers.0.mlp.up_proj.weight": w})
    assert stacked == [] and table["status"].tolist() == ["ok"]


def test_defect9_the_staging_queue_is_bounded_by_bytes_not_by_count():
    from alphaspec.sources.read_ahead import StagingQueue

    stop = threading.Event()
    q = StagingQueue(100, stop)
    assert q.put("a", 60) and q.bytes == 60
    waiting = threading.Thread(target=lambda: q.put("b", 60))
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive() and q.bytes == 60  # would pass the bound: waits
    assert q.get() == "a"
    waiting.join(2)
    assert not waiting.is_alive() and q.bytes == 60 and q.get() == "b"
    assert q.put("huge", 10**9)  # alone, a matrix larger than the bound still goes in
    stop.set()
    assert not q.put("late", 1)


PEAK = """
import sys, torch
from alphaspec import analyze

def peak():  # this process's high-water mark (ru_maxrss would include the parent's, inherited through fork)
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

base = peak()
table = analyze(sys.argv[1], device="cpu")
assert table["status"].tolist() == ["ok"], table
print(peak() - base)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from /proc")
def test_defect9_a_tall_embedding_costs_about_its_own_size_not_four_times_it(tmp_path):
    """Gemma-3 270M's 262144x640 embedding peaked at 3.96 GB for a 253 MB file: the whole matrix was widened
    to float64. The Gram matrix is now summed from float64 blocks of rows."""
    from safetensors.torch import save_file

    w = (torch.randn(131072, 512, generator=torch.Generator().manual_seed(0)) * 0.02).bfloat16()
    save_file({"model.embed_tokens.weight": w}, str(tmp_path / "model.safetensors"))
    size = w.numel() * 2
    del w
    res = subprocess.run([sys.executable, "-c", PEAK, str(tmp_path / "model.safetensors")], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    grown = int(res.stdout.split()[-1])
    # one read copy of the file, a 64 MiB float64 block and the Gram matrix; the whole float64 copy alone is 4x
    assert grown < 2 * size + (96 << 20), (grown / 2**20, size / 2**20)


def test_eigenvalues_of_blocks_of_rows_equal_the_squared_singular_values(monkeypatch):
    monkeypatch.setitem(esd.BLOCK_BYTES, "cpu", 40_000)  # many row blocks
    for shape in [(1000, 600), (600, 1000), (3, 700, 530)]:
        w = torch.randn(*shape, generator=torch.Generator().manual_seed(7))
        lam = esd.eigenvalues(w).numpy()
        expected = np.sort(np.linalg.svd(w.double().numpy(), compute_uv=False) ** 2, axis=-1)
        np.testing.assert_allclose(lam, expected, rtol=1e-10, atol=1e-12 * expected.max())


# --- 10: the overlapped refresh benchmark ---------------------------------------------------------------------------


def test_defect10_the_decay_benchmark_waits_for_the_training_stream_only(monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import decay as bench_decay
    finally:
        sys.path.remove(str(ROOT / "bench"))
    calls = []

    class Stream:
        def synchronize(self):
            calls.append("stream")

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append("device"))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: Stream())
    bench_decay.sync(torch.device("cuda", 0))
    assert calls == ["stream"]


def test_json_results_are_written_as_they_come(tmp_path):
    """bench/esd.py keeps its figures in a JSON file rewritten after every measurement."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import esd as bench_esd
    finally:
        sys.path.remove(str(ROOT / "bench"))
    results = bench_esd.Results(tmp_path / "r.json")
    results["a"] = 1.5
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1.5}
    results |= {"b": 2}
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1.5, "b": 2}


# --- small models as lean as large ones -------------------------------------------------------------------------------


def test_the_cli_solves_one_matrix_per_core_and_gives_back_the_threads(tmp_path, monkeypatch):
    """`--workers 0` (the default): one single-threaded solve per core on the CPU, the same table as one
    solve at a time, and torch's thread count as it was (the CLI may run inside a notebook or a test)."""
    import pandas as pd

    from alphaspec.analysis.cpu_threads import MAX_CPU_WORKERS, auto_workers, cores

    assert auto_workers(torch.device("cpu")) == max(1, min(cores(), MAX_CPU_WORKERS))
    assert auto_workers(torch.device("cuda", 0)) == 1 and auto_workers(torch.device("cpu"), world=2) == 1
    seen = []
    real = solve.scaled_eigenvalues
    monkeypatch.setattr(solve, "scaled_eigenvalues", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    folder = synth.write(tmp_path / "m", synth.llama(layers=3), synth.LLAMA_CONFIG)
    before = torch.get_num_threads()
    tables = {}
    for workers in ("0", "1"):
        res = CliRunner().invoke(app, ["analyze", str(folder), "-q", "--workers", workers, "-o",
                                       str(tmp_path / f"r{workers}.csv")])
        assert res.exit_code == 0, res.output
        tables[workers] = pd.read_csv(tmp_path / f"r{workers}.csv")
    assert torch.get_num_threads() == before
    if auto_workers(torch.device("cpu")) > 1:
        assert set(seen[: len(seen) // 2]) == {1} and set(seen[len(seen) // 2:]) == {before}
    pd.testing.assert_frame_equal(tables["0"], tables["1"], rtol=1e-12)
