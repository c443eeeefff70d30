"""Throughput of `alphaspec train` per strategy: tokens/s, step time, achieved TFLOP/s, cost against uniform.

    python bench/train.py --model llama-60m --seq-len 256 --batch-size 32 --steps 40           # CPU or GPU
    python bench/train.py --model llama-130m --seq-len 256 --batch-size 128 --steps 100 --compile --json out.json
    python bench/train.py --strategies uniform --optimizers adamw,muon          # Muon's cost against AdamW

Each strategy trains on the bundled text in a fresh temporary run; the first log interval (warm-up,
compilation) is left out of the medians. alphadecay and adadecay refresh every --gap steps, so their
cost here is the refresh cost amortised over that gap. Prints the machine and the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import pandas as pd
import torch

from alphaspec.train import TrainConfig, train
from alphaspec.train.model import PRESETS, ModelConfig, model_flops_per_token
from alphaspec.train.placement import PEAK_BF16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-20m", choices=list(PRESETS))
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--gap", type=int, default=20)
    ap.add_argument("--strategies", default="uniform,alphadecay,awd,adadecay,lrm")
    ap.add_argument("--optimizers", default="adamw", help="comma-separated: adamw, adam, muon")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and args.device != "cpu"
    gpu = torch.cuda.get_device_name() if cuda else "none"
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, gpu {gpu}, "
          f"torch {torch.__version__}", flush=True)
    log_every = max(1, args.steps // 10)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for optimizer, strategy in [(o, s) for o in args.optimizers.split(",") for s in args.strategies.split(",")]:
            out = f"{tmp}/{optimizer}-{strategy}"
            cfg = TrainConfig.of(out=out, model=args.model, seq_len=args.seq_len, batch_size=args.batch_size,
                                 steps=args.steps, strategy=strategy, gap=args.gap, device=args.device,
                                 compile=args.compile, log_every=log_every, eval_every=10**9, checkpoint_every=10**9,
                                 warmup_steps=1, optimizer=optimizer)
            train(cfg)
            m = pd.read_csv(f"{out}/metrics.csv").iloc[1:]
            vocab = json.loads(Path(f"{out}/config.json").read_text())["vocab_size"]
            flops = model_flops_per_token(ModelConfig(vocab_size=vocab, **PRESETS[args.model]), args.seq_len)
            tps = float(m["tokens_per_s"].median())
            row = {"optimizer": optimizer, "strategy": strategy, "tokens_per_s": tps,
                   "step_ms": 1e3 * args.batch_size * args.seq_len / tps, "tflops": tps * flops / 1e12}
            peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
            row["mfu"] = row["tflops"] * 1e12 / peak if peak else None
            results.append(row)
            print(f"{optimizer} {strategy}: {tps:,.0f} tok/s", flush=True)
            save(args, gpu, results)  # as it goes: a run cut off by its time limit keeps what it measured
    base = results[0]["tokens_per_s"]  # the first optimizer's first strategy
    print(f"model {args.model}, batch {args.batch_size} x {args.seq_len}, {args.steps} steps, gap {args.gap}, "
          f"compile {args.compile}")
    for r in results:
        r["slowdown"] = base / r["tokens_per_s"]
        mfu = f", MFU {r['mfu']:.1%}" if r["mfu"] else ""
        print(f"{r['optimizer']:>6} {r['strategy']:>11}: {r['tokens_per_s']:>10,.0f} tok/s  {r['step_ms']:8.1f} ms/step  "
              f"{r['tflops']:7.2f} TFLOP/s{mfu}  {r['slowdown']:.3f}x {results[0]['optimizer']} "
              f"{results[0]['strategy']}", flush=True)
    save(args, gpu, results)


def save(args, gpu: str, results: list[dict]) -> None:
    if args.json:
        args.json.write_text(json.dumps({"machine": {"gpu": gpu, "torch": torch.__version__}, "args": vars(args) | {
            "json": str(args.json)}, "results": results}, indent=1))


if __name__ == "__main__":
    main()
