"""Training throughput of dlbook's GPT, against PyTorch's own Transformer layers.

Configuration (the chapter-3 issue): n_layer=4, n_head=4, n_embd=128, block_size=64,
batch 12, character vocabulary of ``dlbook.data.pydoc_text()``, AdamW.

It prints training tokens/s for:

* ``dlbook.transformer.GPT`` in float32 (every device);
* a plain reference built from ``nn.TransformerEncoderLayer`` (pre-LN, GELU, causal,
  same widths), to show that dlbook's model is no slower than a well-written one;
* on CUDA only: dlbook's GPT with bf16 autocast, and with bf16 + ``torch.compile``,
  with model FLOPs utilization (MFU) = achieved model FLOP/s / the GPU's peak bf16 FLOP/s.

Usage::

    python benchmarks/gpt_throughput.py                  # auto device, 30 timed steps
    python benchmarks/gpt_throughput.py --threads 1 --steps 50
    python benchmarks/gpt_throughput.py --peak-tflops 989  # MFU against a peak you state
    python benchmarks/gpt_throughput.py --quick            # a few seconds: 1 thread, 3 steps (make test)
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from dlbook.data import CharTokenizer, pydoc_text, random_batch
from dlbook.device import autocast, get_device, set_threads
from dlbook.transformer import GPT, count_parameters, flops_per_token

CONFIG = dict(n_layer=4, n_head=4, n_embd=128, block_size=64)
BATCH = 12

# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s, without sparsity).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0}


class PlainGPT(nn.Module):
    """The reference: embeddings + nn.TransformerEncoder (pre-LN, causal) + tied head."""

    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, n_embd)
        self.pos = nn.Embedding(block_size, n_embd)
        layer = nn.TransformerEncoderLayer(n_embd, n_head, 4 * n_embd, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.head.weight = self.tok.weight
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(block_size), persistent=False)

    def forward(self, idx, targets):
        t = idx.size(1)
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        x = self.blocks(x, mask=self.mask[:t, :t], is_causal=True)
        logits = self.head(self.ln_f(x))
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def measure(model, ids, device, steps, warmup, amp=False, compile=False):
    """Training tokens/s of ``model`` over ``steps`` AdamW steps, after ``warmup`` untimed ones."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step_fn = torch.compile(model) if compile else model
    g = torch.Generator().manual_seed(0)
    batches = [random_batch(ids, CONFIG["block_size"], BATCH, generator=g, device=device)
               for _ in range(steps + warmup)]

    def step(x, y):
        with autocast(device, enabled=amp):
            _, loss = step_fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for x, y in batches[:warmup]:
        step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for x, y in batches[warmup:]:
        loss = step(x, y)
    loss.item()  # waits for the device
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * BATCH * CONFIG["block_size"] / (time.perf_counter() - start)


def peak_flops(device, stated_tflops):
    if stated_tflops:
        return stated_tflops * 1e12, "stated"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12, f"{key} data sheet"
    return None, name


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per variant; the best is reported")
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU peak bf16 TFLOP/s for MFU")
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds (1 thread, 3 timed steps, 1 warm-up, 1 repeat, no compile): proves "
                             "the benchmark still runs; its figures mean little")
    args = parser.parse_args()
    if args.quick:
        args.threads, args.steps, args.warmup, args.repeats = 1, 3, 1, 1

    device = get_device(args.device)
    threads = set_threads(args.threads)
    tok = CharTokenizer(pydoc_text())
    ids = tok.encode(pydoc_text())
    torch.manual_seed(0)
    probe = GPT(tok.vocab_size, **CONFIG)
    fpt = flops_per_token(probe, CONFIG["block_size"])
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f" | torch {torch.__version__} | CPU threads {threads}")
    print(f"GPT {CONFIG}, batch {BATCH}, vocab {tok.vocab_size}: {count_parameters(probe):,} parameters, "
          f"{fpt / 1e6:.2f} MFLOP per training token")

    variants = [("dlbook GPT, fp32", lambda: GPT(tok.vocab_size, **CONFIG), {}),
                ("plain nn.TransformerEncoder, fp32", lambda: PlainGPT(tok.vocab_size, CONFIG["block_size"],
                                                                       CONFIG["n_layer"], CONFIG["n_head"],
                                                                       CONFIG["n_embd"]), {})]
    if device.type == "cuda" and not args.quick:
        variants += [("dlbook GPT, bf16 autocast", lambda: GPT(tok.vocab_size, **CONFIG), dict(amp=True)),
                     ("dlbook GPT, bf16 + torch.compile", lambda: GPT(tok.vocab_size, **CONFIG),
                      dict(amp=True, compile=True))]
    peak, peak_source = peak_flops(device, args.peak_tflops) if device.type == "cuda" else (None, "")

    print(f"\n{'variant':<36}{'tokens/s':>12}{'model TFLOP/s':>15}" + (f"{'MFU':>8}" if peak else ""))
    for name, build, kwargs in variants:
        best = 0.0
        for _ in range(args.repeats):
            torch.manual_seed(0)
            model = build().to(device)
            best = max(best, measure(model, ids, device, args.steps, args.warmup, **kwargs))
        line = f"{name:<36}{best:>12,.0f}{best * fpt / 1e12:>15.4f}"
        if peak:
            line += f"{best * fpt / peak:>8.1%}"
        print(line)
    if device.type == "cuda":
        print(f"\nMFU against peak bf16 {peak / 1e12:.0f} TFLOP/s ({peak_source})" if peak else
              f"\nMFU not shown: unknown peak for {peak_source}; pass --peak-tflops")
        print("Model FLOPs = 6N + 12 L T C per token (dlbook.transformer.flops_per_token); "
              "at this tiny size a GPU is far from its peak: the batch is too small to fill it.")


if __name__ == "__main__":
    main()
