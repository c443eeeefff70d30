"""Cost of AlphaDecay refreshes on a 60M LLaMA (GaLore's llama_60m shape), beside the optimizer step.

    python bench/decay.py [--device cpu|cuda] [--steps 10] [--batch 8] [--seq 256] [--model 60m|tiny]

Prints: one refresh (synchronous), the optimizer step and the full training step, and the training
slowdown at gap 1 (measured, synchronous and overlapped) and gap 500 (measured refresh cost
amortised over 500 measured steps). Needs transformers (pip install 'alphaspec[hf]').
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from alphaspec import AlphaDecay


def sync(device: torch.device) -> None:
    """Wait for the training stream only: a whole-device synchronize would also wait for the hook's side
    stream and make the overlapped refresh serial."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


MODELS = {"60m": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8),
          "tiny": dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4)}  # rehearsal
VOCAB = 32000


def make(device: torch.device, size: str = "60m"):
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = MODELS[size]
    config = LlamaConfig(vocab_size=VOCAB, num_key_value_heads=shape["num_attention_heads"],
                         max_position_embeddings=1024, **shape)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    return model, opt


def timed_steps(model, opt, hook, steps: int, batch: int, seq: int, device: torch.device) -> tuple[float, float]:
    """Mean seconds of a training step and of its optimizer.step() part."""
    x = torch.randint(0, VOCAB, (batch, seq), device=device)
    total = opt_time = 0.0
    for i in range(steps + 1):  # the first step warms up and is not counted
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model(x).logits.flatten(0, 1).float(), x.flatten())
        loss.backward()
        sync(device)
        t1 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        t2 = time.perf_counter()
        if hook is not None:
            hook.step()
        sync(device)
        if i:
            total += time.perf_counter() - t0
            opt_time += t2 - t1
    return total / steps, opt_time / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--model", choices=sorted(MODELS), default="60m", help="60m (GaLore's llama_60m) or tiny")
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, gpu {gpu}, torch {torch.__version__}")

    model, opt = make(device, args.model)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, batch {args.batch}x{args.seq}")
    base, opt_step = timed_steps(model, opt, None, args.steps, args.batch, args.seq, device)
    hook = AlphaDecay(model, opt, gap=10**9, overlap=False)  # builds the groups; refreshes only when asked
    times = []
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        hook._apply(hook._gather(hook._solve(hook._snapshot())), hook.step_count)
        sync(device)
        times.append(time.perf_counter() - t0)
    refresh = min(times)
    print(f"one refresh ({len(hook.tuned)} matrices, synchronous): {refresh * 1e3:.0f} ms; "
          f"optimizer step {opt_step * 1e3:.0f} ms; training step {base * 1e3:.0f} ms")
    for overlap in (False, True):
        model, opt = make(device, args.model)
        hook = AlphaDecay(model, opt, gap=1, overlap=overlap)
        step, _ = timed_steps(model, opt, hook, args.steps, args.batch, args.seq, device)
        hook.close()
        print(f"gap 1, {'overlapped' if overlap else 'synchronous'}: {step * 1e3:.0f} ms/step = {step / base:.2f}x "
              f"(refreshes {hook.refreshes}, last staleness {hook.staleness})")
    print(f"gap 500 (refresh amortised over 500 steps): {(500 * base + refresh) / (500 * base):.4f}x")


if __name__ == "__main__":
    main()
