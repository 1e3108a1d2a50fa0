"""How much does dlbook.train.fit cost over a bare, hand-written PyTorch loop?

Both train the same MLP (64 -> 256 -> 256 -> 10) on the digits training set with
plain SGD, batch 64, from the same initial weights and on the same batches
(``TensorBatches`` with the same seed). The bare loop is the four lines every
loop needs (zero_grad, forward + loss, backward, step) and nothing else.

Method: one warm-up run of each, then ``--repeats`` rounds; each round times the
bare loop and ``fit`` (the order alternates between rounds, so that a burst of
load on a shared machine hits both alike) for ``--epochs`` epochs each. The
figure is the median samples/s of each, and the overhead
``1 - fit / bare`` in percent, from the medians and from each one's fastest run
(on a busy machine the fastest run is the one least disturbed by other work). Printed, not asserted: timings on a shared
machine are noisy, so run it when the machine is quiet, and more than once.

    python benchmarks/train_loop.py [--repeats 9] [--epochs 3] [--threads 1] [--batch-size 64] [--progress]
    python benchmarks/train_loop.py --quick     # a few seconds: 1 repeat of 1 epoch (make test runs it)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from dlbook.data import TensorBatches, load_digits
from dlbook.device import get_device
from dlbook.train import fit


def make_model(device) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).to(device)


def bare_loop(model, loader, epochs: int) -> None:
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()


def with_fit(model, loader, epochs: int, progress: bool) -> None:
    fit(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.05), loader,
        epochs=epochs, progress=progress)


def samples_per_s(run, device, loader, epochs: int) -> float:
    model = make_model(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(model, loader, epochs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return epochs * len(loader.X) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--progress", action="store_true", help="time fit with its progress bar on")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: dlbook.device.get_device())")
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds (1 repeat of 1 epoch): proves the benchmark still runs")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.epochs = 1, 1
    torch.set_num_threads(args.threads)
    device = get_device(args.device)
    digits = load_digits(device=device)
    loader = TensorBatches(digits.X_train, digits.y_train, batch_size=args.batch_size, seed=0)

    runs = {"bare loop": lambda m, l, e: bare_loop(m, l, e),
            "fit": lambda m, l, e: with_fit(m, l, e, progress=args.progress)}
    for run in runs.values():  # warm-up: allocator, caches, lazy imports
        samples_per_s(run, device, loader, 1)
    results = {name: [] for name in runs}
    for r in range(args.repeats):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            results[name].append(samples_per_s(runs[name], device, loader, args.epochs))

    bare, fitted = statistics.median(results["bare loop"]), statistics.median(results["fit"])
    print(f"device {device.type}, threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"{args.epochs} epochs x {args.repeats} repeats, progress bar {'on' if args.progress else 'off'}")
    for name, values in results.items():
        print(f"{name:10s} median {statistics.median(values):10,.0f} samples/s   "
              f"(min {min(values):,.0f}, max {max(values):,.0f})")
    print(f"fit overhead vs bare loop: {100 * (1 - fitted / bare):+.1f}% (medians), "
          f"{100 * (1 - max(results['fit']) / max(results['bare loop'])):+.1f}% (fastest runs, "
          "the steadier figure when other work shares the machine)")


if __name__ == "__main__":
    main()
