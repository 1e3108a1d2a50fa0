"""int8 inference and structured pruning, measured side by side (chapter 6).

1. An MLP 64 -> W -> W -> W -> 10 (W = 1024 by default) is trained briefly on digits. Its
   latency at batch 256 and batch 1 is measured in float32 and in int8 three ways:
   the book's own integer path (``dlbook.compression.Int8Linear``: dynamic per-row int8
   activations, per-row int8 weights, ``torch._int_mm`` with an int32 accumulator), torchao's
   ``Int8DynamicActivationInt8WeightConfig`` through ``quantize_``, and, as a reference, the
   deprecated ``torch.ao.quantization.quantize_dynamic``. Test accuracy of each is printed.
2. The same comparison for a tiny MLP (64 -> 64 -> 10) at batch 1, where int8 is slower:
   quantizing the activations costs more than the small matmul saves.
3. Structured pruning: a wide layer pair 1024 -> 4096 -> 1024 before and after removing 50%
   of the hidden neurons with ``prune_neurons`` (the matrices shrink to 1024 -> 2048 -> 1024).

Latency: ``dlbook.compression.latency`` (``torch.utils.benchmark``: eval mode,
inference_mode, warm-up, fixed threads; median and IQR). Printed, not asserted: timings on a
shared machine are noisy, so run it when the machine is quiet, and more than once.

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

from dlbook.compression import Int8Linear, latency, model_size, prune_neurons, replace_linears
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
    parser.add_argument("--min-run-time", type=float, default=0.5)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds (CI)")
    args = parser.parse_args()
    if args.quick:                         # one thread: two threads stall when CI shares the cores
        args.width, args.epochs, args.min_run_time, args.threads = 128, 1, 0.02, 1
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

    def time_it(m, x):
        with quiet():
            return latency(m, x, threads=args.threads, min_run_time=args.min_run_time)

    print(f"MLP 64 -> {width} x3 -> 10 on digits, {args.threads} threads, torch {torch.__version__}")
    print(f"{'variant':<56}{'test acc':>9}{'MB':>7}{'ms @' + str(args.batch):>10}{'iqr':>9}{'speed-up':>9}"
          f"{'ms @1':>8}{'speed-up':>9}")
    base = {}
    for name, m in variants.items():
        acc = accuracy(m, digits.X_test, digits.y_test)
        mb = model_size(m).bytes / 1e6
        big, one = time_it(m, X), time_it(m, X[:1])
        base.setdefault("big", big.median)
        base.setdefault("one", one.median)
        print(f"{name:<56}{acc:>9.4f}{mb:>7.2f}{big.median * 1e3:>10.3f}{big.iqr * 1e3:>9.3f}"
              f"{base['big'] / big.median:>8.2f}x{one.median * 1e3:>8.3f}{base['one'] / one.median:>8.2f}x")

    # -- 2. a tiny layer at batch 1: where int8 is slower
    tiny = MLP([64, 64, 10]).eval()
    x1 = digits.X_test[:1]
    t_f = time_it(tiny, x1).median
    t_i = time_it(replace_linears(tiny, Int8Linear.from_linear), x1).median
    line = f"\ntiny MLP 64 -> 64 -> 10 at batch 1: float32 {t_f * 1e6:.1f} us, dlbook int8 {t_i * 1e6:.1f} us ({t_f / t_i:.2f}x)"
    tiny_ao = torchao_int8(tiny)
    if tiny_ao is not None:
        t_a = time_it(tiny_ao, x1).median
        line += f", torchao int8 {t_a * 1e6:.1f} us ({t_f / t_a:.2f}x)"
    print(line)

    # -- 3. structured pruning of a wide layer pair
    hidden = 4 * width
    torch.manual_seed(1)
    wide = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width)).eval()
    half = prune_neurons(wide, 0.5)
    xw = torch.randn(args.batch, width)
    t_wide, t_half = time_it(wide, xw), time_it(half, xw)
    print(f"\nstructured pruning, {width} -> {hidden} -> {width} at batch {args.batch}: "
          f"{t_wide.median * 1e3:.3f} ms; 50% of the hidden neurons removed ({width} -> "
          f"{half[0].out_features} -> {width}): {t_half.median * 1e3:.3f} ms, "
          f"{t_wide.median / t_half.median:.2f}x faster, {model_size(wide).bytes / model_size(half).bytes:.2f}x smaller")


if __name__ == "__main__":
    main()
