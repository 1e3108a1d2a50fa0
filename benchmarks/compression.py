"""int8 inference and structured pruning, measured side by side (chapter 6).

1. An MLP 64 -> W -> W -> W -> 10 (W = 1024 by default) is trained briefly on digits. Its
   latency at batch 256 and batch 1 (and float32's time per example at each) is measured in float32
   and in int8 three ways:
   the book's own integer path (``dlbook.compression.Int8Linear``: dynamic per-row int8
   activations, per-row int8 weights, ``torch._int_mm`` with an int32 accumulator), torchao's
   ``Int8DynamicActivationInt8WeightConfig`` through ``quantize_``, and, as a reference, the
   deprecated ``torch.ao.quantization.quantize_dynamic``. Test accuracy of each is printed.
2. The same comparison for a tiny MLP (64 -> 64 -> 10) at batch 1, where int8 is slower:
   quantizing the activations costs more than the small matmul saves.
3. Structured pruning: a wide layer pair 1024 -> 4096 -> 1024 before and after removing 50%
   of the hidden neurons with ``prune_neurons`` (the matrices shrink to 1024 -> 2048 -> 1024).
4. Sparse storage: a W x W weight with 50% to 99% zeros, multiplied at batch 256 as a dense tensor
   and in CSR format (``to_sparse_csr``): CSR time / dense time.

Latency: ``dlbook.compression.compare_latency`` (every variant in turn, in rounds, each timed with
``latency``: ``torch.utils.benchmark``, eval mode, inference_mode, warm-up, fixed threads; the median
per variant and the median of the per-round speed-ups). Printed, never asserted: what is fast depends
on the CPU's kernels (compare ``ATEN_CPU_CAPABILITY=avx2`` or ``default`` with
``MKL_ENABLE_INSTRUCTIONS`` / ``ONEDNN_MAX_CPU_ISA`` set to match) and a shared machine is noisy, so run
it when the machine is quiet, and more than once. Chapter 6 quotes the ranges this measured on three
kernel paths; its notebooks assert only the effects that are several times larger than the noise.

    python benchmarks/compression.py [--threads 2] [--width 1024] [--epochs 8] [--min-run-time 0.5]
    python benchmarks/compression.py --quick      # a few seconds, tiny sizes, one thread (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import warnings

import torch
from torch import nn

from dlbook.compression import Int8Linear, compare_latency, model_size, prune_neurons, replace_linears
from dlbook.data import load_digits, tensor_loader
from dlbook.mlp import MLP
from dlbook.train import evaluate, fit


@contextlib.contextmanager
def quiet():
    """Keep torchao's import-time log lines and deprecation warnings out of the table."""
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def torchao_int8(model: nn.Module) -> nn.Module | None:
    """torchao's dynamic int8 (activations and weights); None if torchao is missing."""
    try:
        with quiet():
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
            q = copy.deepcopy(model).eval()
            quantize_(q, Int8DynamicActivationInt8WeightConfig())
    except ImportError:
        return None
    return q


def ao_dynamic(model: nn.Module) -> nn.Module:
    with quiet():
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def accuracy(model, X, y) -> float:
    with torch.inference_mode(), quiet():
        return (model(X).argmax(1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--min-run-time", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per comparison")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds (CI)")
    args = parser.parse_args()
    if args.quick:                         # one thread: two threads stall when CI shares the cores
        args.width, args.epochs, args.min_run_time, args.threads, args.rounds = 128, 1, 0.01, 1, 1
    torch.manual_seed(0)
    digits = load_digits()
    width = args.width

    # -- 1. the wide MLP, trained briefly
    model = MLP([64, width, width, width, 10])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fit(model, nn.CrossEntropyLoss(), opt, tensor_loader(digits.X_train, digits.y_train, 64), epochs=args.epochs,
        progress=False)
    model.eval()
    X = digits.X_test.repeat(-(-args.batch // len(digits.X_test)), 1)[:args.batch].contiguous()
    variants = {"float32": model, "int8, dlbook Int8Linear (torch._int_mm)": replace_linears(model, Int8Linear.from_linear)}
    ao = torchao_int8(model)
    if ao is not None:
        variants["int8, torchao Int8DynamicActivationInt8WeightConfig"] = ao
    variants["int8, torch.ao quantize_dynamic (deprecated)"] = ao_dynamic(model)

    def compare(models, x):
        with quiet():
            return compare_latency(models, x, threads=args.threads, rounds=args.rounds,
                                   min_run_time=args.min_run_time)

    print(f"MLP 64 -> {width} x3 -> 10 on digits, {args.threads} threads, {args.rounds} interleaved rounds, "
          f"torch {torch.__version__}, ATen CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'variant':<56}{'test acc':>9}{'MB':>7}{'ms @' + str(args.batch):>10}{'speed-up':>9}"
          f"{'ms @1':>8}{'speed-up':>9}")
    big, one = compare(variants, X), compare(variants, X[:1])
    for name, m in variants.items():
        acc = accuracy(m, digits.X_test, digits.y_test)
        mb = model_size(m).bytes / 1e6
        print(f"{name:<56}{acc:>9.4f}{mb:>7.2f}{big[name].median * 1e3:>10.3f}{big[name].speedup:>8.2f}x"
              f"{one[name].median * 1e3:>8.3f}{one[name].speedup:>8.2f}x")
    t1, tb = one["float32"].median, big["float32"].median / args.batch
    print(f"float32 per example: {t1 * 1e6:.1f} us at batch 1, {tb * 1e6:.2f} us at batch {args.batch} "
          f"({t1 / tb:.0f}x less)")

    # -- 2. a tiny layer at batch 1: where int8 is slower
    tiny = MLP([64, 64, 10]).eval()
    x1 = digits.X_test[:1]
    tiny_variants = {"float32": tiny, "dlbook int8": replace_linears(tiny, Int8Linear.from_linear)}
    tiny_ao = torchao_int8(tiny)
    if tiny_ao is not None:
        tiny_variants["torchao int8"] = tiny_ao
    r = compare(tiny_variants, x1)
    print("\ntiny MLP 64 -> 64 -> 10 at batch 1: " + ", ".join(
        f"{name} {c.median * 1e6:.1f} us ({c.speedup:.2f}x)" for name, c in r.items()))

    # -- 3. structured pruning of a wide layer pair
    hidden = 4 * width
    torch.manual_seed(1)
    wide = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width)).eval()
    half = prune_neurons(wide, 0.5)
    xw = torch.randn(args.batch, width)
    r = compare({"wide": wide, "half": half}, xw)
    print(f"\nstructured pruning, {width} -> {hidden} -> {width} at batch {args.batch}: "
          f"{r['wide'].median * 1e3:.3f} ms; 50% of the hidden neurons removed ({width} -> "
          f"{half[0].out_features} -> {width}): {r['half'].median * 1e3:.3f} ms, "
          f"speed-up {r['half'].speedup:.2f}x, {model_size(wide).bytes / model_size(half).bytes:.2f}x smaller")

    # -- 4. CSR against dense, same zeros
    W = torch.randn(width, width)
    xT = torch.randn(width, args.batch)
    ratios = []
    for s in (0.5, 0.8, 0.9, 0.95, 0.99):
        Ws = W * (torch.rand_like(W) >= s)
        with quiet():                                  # "sparse CSR support is in beta"
            csr = Ws.to_sparse_csr()
            r = compare({"dense": lambda v: Ws @ v, "CSR": lambda v: csr @ v}, xT)
        ratios.append(f"{s:.0%} zeros {1 / r['CSR'].speedup:.2f}")
    print(f"\nCSR / dense time, {width} x {width} weight at batch {args.batch}: " + ", ".join(ratios))


if __name__ == "__main__":
    main()
