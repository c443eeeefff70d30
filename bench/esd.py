"""Time `alphaspec analyze` on LLaMA-2-7B/13B-shaped sharded bf16 checkpoints (random weights).

Against: bare float64 Gram + torch.linalg.eigvalsh (+ median fit) on the same matrices, and
WeightWatcher 0.7.7 `analyze()` with its defaults (install it in the bench environment, or point
--ww-python at an environment that has it). Prints the figures and the machine; --json saves them.

    python bench/esd.py --model 13b --blocks 40              # the whole 13B-shaped model (H100)
    python bench/esd.py --model 13b --blocks 1 --ww          # one block, plus WeightWatcher (2-core box)
    python bench/esd.py --estimate 405b --gpus 8 16 64       # Llama-3.1-405B over many GPUs, from one GPU's times

Times for a subset of blocks are also extrapolated per matrix to the full model, and say so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from alphaspec.devices import resolve_device
from alphaspec.spectra.powerlaw import fit_sorted

os.environ["ALPHASPEC_NO_CACHE"] = "1"  # measure solves, not the eigenvalue store (bench/store.py measures it)

SHAPES = {"7b": {"hidden": 4096, "ff": 11008, "layers": 32}, "13b": {"hidden": 5120, "ff": 13824, "layers": 40},
          "tiny": {"hidden": 256, "ff": 688, "layers": 4}}  # tiny: the CPU rehearsal of bench/gpu.sh
# Llama-3.1-405B: (rows, cols) -> matrices of that shape (126 blocks of q, k, v, o, gate, up, down; embed, head)
SHAPES_405B = {(16384, 16384): 2 * 126, (1024, 16384): 2 * 126, (53248, 16384): 2 * 126, (16384, 53248): 126,
               (128256, 16384): 2}
OUT = Path(__file__).resolve().parent / "out"


def block_tensors(i: int, hidden: int, ff: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = f"model.layers.{i}."
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (hidden, hidden),
              "self_attn.v_proj": (hidden, hidden), "self_attn.o_proj": (hidden, hidden),
              "mlp.gate_proj": (ff, hidden), "mlp.up_proj": (ff, hidden), "mlp.down_proj": (hidden, ff)}
    out = {p + k + ".weight": (torch.randn(*s, generator=gen, device=gen.device) * 0.02).bfloat16().cpu()
           for k, s in shapes.items()}
    out[p + "input_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    out[p + "post_attention_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    return out


def write_checkpoint(model: str, blocks: int, per_shard: int) -> Path:
    """A HF-style sharded directory (index + shards of `per_shard` blocks), cached between runs."""
    cfg = SHAPES[model]
    folder = OUT / f"llama-{model}-{blocks}blocks"
    index_path = folder / "model.safetensors.index.json"
    if index_path.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator("cuda" if torch.cuda.is_available() else "cpu").manual_seed(0)  # GPU: 10x faster to write
    starts = list(range(0, blocks, per_shard))
    weight_map = {}
    for n, start in enumerate(starts):
        name = f"model-{n + 1:05d}-of-{len(starts):05d}.safetensors"
        tensors = {}
        for i in range(start, min(start + per_shard, blocks)):
            tensors |= block_tensors(i, cfg["hidden"], cfg["ff"], gen)
        save_file(tensors, str(folder / name))
        weight_map |= dict.fromkeys(tensors, name)
        print(f"  wrote {name} ({sum(t.numel() for t in tensors.values()) * 2 / 1e9:.2f} GB)", flush=True)
    config = {"model_type": "llama", "hidden_size": cfg["hidden"], "intermediate_size": cfg["ff"],
              "num_attention_heads": cfg["hidden"] // 128, "num_hidden_layers": blocks}
    (folder / "config.json").write_text(json.dumps(config))
    index_path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def run_child(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (GB) and stdout of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-2000:]}")
    return wall, usage.ru_maxrss / 1e6, stdout


def bare_eigvalsh(folder: Path, device: torch.device, blocks: int | None = None) -> dict[str, float]:
    """Seconds of Gram + eigvalsh alone (and with a median fit) over the same matrices (those of the first
    `blocks` blocks), no reading counted."""
    solve = fitted = 0.0
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118
                layer = int(name.split(".")[2]) if name.startswith("model.layers.") else 0
                if blocks is not None and layer >= blocks:
                    continue
                w = f.get_tensor(name)
                if w.ndim != 2:
                    continue
                w = w.to(device)
                sync(device)
                t0 = time.perf_counter()
                w = w.double()  # what a user would write: full Gram product, then eigvalsh
                lam = torch.linalg.eigvalsh(w.mT @ w if w.shape[0] >= w.shape[1] else w @ w.mT).clamp_min_(0)
                sync(device)
                t1 = time.perf_counter()
                fit_sorted(lam[lam > 1e-12 * lam[-1]], "median")
                sync(device)
                solve += t1 - t0
                fitted += time.perf_counter() - t0
    return {"eigvalsh_s": solve, "eigvalsh_median_s": fitted}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


WW_SNIPPET = """
import sys, time, logging, warnings
warnings.filterwarnings("ignore"); logging.disable(logging.CRITICAL)
import weightwatcher as ww
kw = {} if sys.argv[2] == "default" else {"svd_method": "accurate"}
w = ww.WeightWatcher(model=sys.argv[1])
t = time.perf_counter(); d = w.analyze(**kw); dt = time.perf_counter() - t
print("RESULT", dt, len(d))
"""


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": cpu, "cores": str(os.cpu_count()), "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version()}


def solve_seconds(rows: int, cols: int, device: torch.device, precision: str, repeats: int = 2) -> float:
    """Best-of wall seconds of alphaspec's solve (promote, Gram, eigvalsh, median fit) of one bf16 matrix."""
    from alphaspec.spectra.eigenvalues import eigenvalues

    w = (torch.randn(rows, cols, device=device) * 0.02).bfloat16()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        lam = eigenvalues(w, device, precision)
        fit_sorted(lam[lam > 1e-12 * lam[-1]], "median")
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def read_bandwidth(folder: Path, gigabytes: float = 2.0) -> float:
    """GB/s of one reader through alphaspec's Checkpoint.read from a file just written, its pages dropped
    from the page cache first (posix_fadvise), so the disk is measured, not memory."""
    from alphaspec.sources.checkpoint import open_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    rows = min(16384, max(1, int(gigabytes * 1e9 / (16384 * 2))))  # 16384 x 16384 bf16 tensors, or one smaller
    n = max(1, int(gigabytes * 1e9 / (rows * 16384 * 2)))
    file = folder / "bandwidth.safetensors"
    save_file({f"w{i}": torch.zeros(rows, 16384, dtype=torch.bfloat16) for i in range(n)}, str(file))
    fd = os.open(file, os.O_RDONLY)
    os.fsync(fd)  # written pages must be on disk before they can be dropped
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    ckpt = open_checkpoint(file)
    t0 = time.perf_counter()
    total = sum(t.numel() * 2 for _, t in ckpt.read(file, [t.name for t in ckpt.tensors]))
    seconds = time.perf_counter() - t0
    file.unlink()
    return total / 1e9 / seconds


class Results(dict):
    """The figures, rewritten to `path` (when given) after every one is added: a run cut off by its time
    limit keeps what it measured."""

    def __init__(self, path: Path | None, **figures):
        super().__init__()
        self.path = path
        self.update(figures)

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.save()

    def update(self, *args, **kwargs) -> None:
        super().update(*args, **kwargs)
        self.save()

    def __ior__(self, other):
        self.update(other)
        return self

    def save(self) -> None:
        if self.path is not None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self, indent=1))
            tmp.replace(self.path)


def linalg_libraries(device: torch.device) -> list[str]:
    """The eigen-solver back ends to time: cuSOLVER (default) and, where this torch was built with it, MAGMA."""
    if device.type != "cuda":
        return ["default"]
    return ["default", "magma"] if getattr(torch.cuda, "has_magma", False) else ["default"]


def clock(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def estimate_405b(device: torch.device, gpus: list[int], precisions: list[str], shrink: int, out: Results,
                  bandwidth_gb: float = 2.0) -> None:
    """Llama-3.1-405B over many GPUs: per-matrix solve time (measured here) x matrices / GPUs, and the time
    each rank needs to read its share (bf16 bytes / ranks at the measured reader bandwidth)."""
    shapes = {(r // shrink, c // shrink): n for (r, c), n in SHAPES_405B.items()}
    label = "Llama-3.1-405B" + (f" shapes / {shrink}" if shrink > 1 else "")
    out |= {"model": label, "device": str(device)}
    bandwidth = read_bandwidth(OUT / "bandwidth", bandwidth_gb)
    total_gb = sum(r * c * n * 2 for (r, c), n in shapes.items()) / 1e9
    out |= {"reader_gb_s": bandwidth, "checkpoint_gb": total_gb}
    print(f"{label}: {sum(shapes.values())} matrices, {total_gb:.0f} GB in bf16; "
          f"one reader: {bandwidth:.2f} GB/s (its page cache dropped; a virtual machine's host may still cache it)", flush=True)
    for precision in precisions:
        per = {shape: solve_seconds(*shape, device, precision) for shape in shapes}
        serial = sum(per[s] * n for s, n in shapes.items())
        out[f"solve_{precision}_s"] = {f"{r}x{c}": t for (r, c), t in per.items()}
        print(f"  {precision}: " + ", ".join(f"{r}x{c} {t:.2f} s" for (r, c), t in per.items())
              + f"; one device, all matrices: {clock(serial)}", flush=True)
        for n in gpus:
            solve, read = serial / n, total_gb / n / bandwidth
            out[f"{precision}_{n}_gpus_s"] = max(solve, read)
            print(f"    {n:>4} GPUs: solve {clock(solve)}, read {clock(read)} per rank "
                  f"(overlapped: ~{clock(max(solve, read))})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(SHAPES), default="13b")
    ap.add_argument("--blocks", type=int, default=1, help="transformer blocks to write and time (full model: 32/40)")
    ap.add_argument("--per-shard", type=int, default=8, help="blocks per safetensors shard")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--estimators", default="median,gof", help="comma-separated; empty for none")
    ap.add_argument("--workers", default="1", help="comma-separated --workers values to time (median only beyond 1)")
    ap.add_argument("--bare-blocks", type=int, default=None,
                    help="time the bare Gram + eigvalsh on this many blocks (extrapolated; default all, 0 for none)")
    ap.add_argument("--ww", action="store_true", help="also time WeightWatcher 0.7.7 (and alphaspec) on --ww-blocks")
    ap.add_argument("--ww-blocks", type=int, default=1, help="blocks of the checkpoint WeightWatcher is timed on")
    ap.add_argument("--ww-python", default=sys.executable, help="python of an environment with weightwatcher")
    ap.add_argument("--ww-cpu", action="store_true", help="also time WeightWatcher's CPU path (svd_method='accurate')")
    ap.add_argument("--json", type=Path, help="save the figures here (rewritten after each measurement)")
    ap.add_argument("--estimate", choices=["405b"], help="estimate a model too large to time whole (see --gpus)")
    ap.add_argument("--gpus", type=int, nargs="+", default=[8, 16, 64], help="GPU counts of the estimate")
    ap.add_argument("--precisions", nargs="+", default=["fp64", "fp32"], help="solver precisions of the estimate")
    ap.add_argument("--shrink", type=int, default=1, help="divide the estimate's shapes by this (a dry run on a CPU)")
    ap.add_argument("--bandwidth-gb", type=float, default=2.0, help="GB written and read to measure the reader")
    args = ap.parse_args()

    info = machine()
    print("machine:", ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    if args.estimate:
        estimate_405b(resolve_device(args.device), args.gpus, args.precisions, args.shrink,
                      Results(args.json, machine=info), args.bandwidth_gb)
        return
    cfg = SHAPES[args.model]
    folder = write_checkpoint(args.model, args.blocks, args.per_shard)
    n_mats = 7 * args.blocks
    largest = max(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e9
    device = resolve_device(args.device)
    print(f"checkpoint: {folder.name}, {n_mats} matrices, largest shard {largest:.2f} GB, device {device}", flush=True)
    results = Results(args.json, machine=info, model=args.model, blocks=args.blocks, matrices=n_mats,
                      device=str(device), largest_shard_gb=largest)
    time_alphaspec(folder, device, args, results)
    bare_blocks = args.blocks if args.bare_blocks is None else min(args.bare_blocks, args.blocks)
    if bare_blocks:
        time_bare(folder, device, bare_blocks, args, results)
    if args.ww:
        time_weightwatcher(args, cfg, device, results)


def time_alphaspec(folder: Path, device: torch.device, args, results: Results) -> None:
    """`alphaspec analyze` end to end, per estimator and per --workers value, each in a fresh process."""
    scale = SHAPES[args.model]["layers"] / args.blocks
    n_mats = 7 * args.blocks
    with tempfile.TemporaryDirectory() as tmp:
        for est in [e for e in args.estimators.split(",") if e]:
            cmd = [sys.executable, "-m", "alphaspec", "analyze", str(folder), "-q", "-e", est,
                   "--device", str(device), "-o", f"{tmp}/r.csv"]
            wall, rss, _ = run_child(cmd)
            results |= {f"alphaspec_{est}_s": wall, f"alphaspec_{est}_rss_gb": rss}
            print(f"alphaspec analyze -e {est}: {wall:.1f} s end to end ({wall / n_mats:.2f} s/matrix), "
                  f"peak RSS {rss:.2f} GB; full {args.model} extrapolated: {wall * scale:.0f} s", flush=True)
        for workers in [int(w) for w in args.workers.split(",") if int(w) > 1]:
            wall, rss, _ = run_child([sys.executable, "-m", "alphaspec", "analyze", str(folder), "-q", "--device",
                                      str(device), "--workers", str(workers), "-o", f"{tmp}/r.csv"])
            results[f"alphaspec_median_workers{workers}_s"] = wall
            print(f"alphaspec analyze --workers {workers}: {wall:.1f} s end to end, peak RSS {rss:.2f} GB", flush=True)


def time_bare(folder: Path, device: torch.device, blocks: int, args, results: Results) -> None:
    """The bare float64 Gram + eigvalsh on the first `blocks` blocks, per linalg back end, extrapolated."""
    scale = args.blocks / blocks
    for library in linalg_libraries(device):
        if device.type == "cuda":
            torch.backends.cuda.preferred_linalg_library(library)
        bare = bare_eigvalsh(folder, device, blocks)
        results |= {f"{k}_{library}": v * scale for k, v in bare.items()}
        print(f"bare float64 Gram + eigvalsh ({library} linalg), {blocks} block(s) x {scale:.1f}: "
              f"{bare['eigvalsh_s'] * scale:.1f} s; + median fit: {bare['eigvalsh_median_s'] * scale:.1f} s", flush=True)


def time_weightwatcher(args, cfg: dict, device: torch.device, results: Results) -> None:
    """WeightWatcher's analyze() beside alphaspec's, on --ww-blocks blocks."""
    small = write_checkpoint(args.model, args.ww_blocks, args.per_shard)
    n_small = 7 * args.ww_blocks
    with tempfile.TemporaryDirectory() as tmp:
        ours, _, _ = run_child([sys.executable, "-m", "alphaspec", "analyze", str(small), "-q", "--device",
                                str(device), "-o", f"{tmp}/r.csv"])
    results |= {"ww_subset_matrices": n_small, "alphaspec_median_subset_s": ours}
    print(f"subset for WeightWatcher: {n_small} matrices; alphaspec median on it: {ours:.1f} s", flush=True)
    for path in ("default", "accurate") if args.ww_cpu else ("default",):
        wall, rss, out = run_child([args.ww_python, "-c", WW_SNIPPET, str(small), path])
        inner = float(out.split("RESULT")[1].split()[0])
        results[f"weightwatcher_{path}_s"] = inner
        print(f"WeightWatcher 0.7.7 analyze() [{path}]: {inner:.1f} s ({inner / n_small:.2f} s/matrix, "
              f"{inner / n_small * 7 * cfg['layers']:.0f} s extrapolated to the full model), peak RSS {rss:.2f} GB; "
              f"alphaspec median end to end is {inner / ours:.1f}x faster", flush=True)


if __name__ == "__main__":
    main()
