"""One DP-SGD step: the book's two implementations against Opacus 1.6, and against plain SGD.

For each model (an MLP 64-256-256-10 on flattened digits, a small CNN on 8x8 digit images) and
the same batch of 256 digits, clipping bound C = 1 and noise multiplier 1, it times one
training step (zero_grad, forward, backward, privatize, SGD update) of:

* ``sgd``: plain SGD, no privacy (the baseline for the overhead);
* ``book vmap``: ``dlbook.privacy.dp_sgd_step``, per-example gradients with ``vmap(grad(...))``,
  then ``clip_and_noise`` (the definition, materializing B per-example gradients);
* ``book ghost``: ``dlbook.privacy.DPSGD``, per-example gradient norms from the layers' inputs
  and output gradients, clipped sums as one product per layer (no per-example gradients for
  linear layers);
* ``opacus``: Opacus 1.6's ``GradSampleModule`` + ``DPOptimizer`` with its default hooks.

Method: warm-up, then ``--repeats`` rounds; each round times every method for ``--steps`` steps
(``torch.utils.benchmark.Timer``),
in an order that rotates between rounds, so that a burst of load on a shared machine hits all
alike. Printed: the median ms per step of each, the ratio book / Opacus (<= 1 means the book's
step is no slower) and the overhead over plain SGD. Not asserted: timings on a shared machine
are noisy. ``--quick`` runs a few seconds (what CI runs).

    python benchmarks/dp_sgd.py [--quick] [--repeats 7] [--steps 10] [--threads 2] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import torch
from torch import nn
from torch.utils import benchmark

from dlbook.data import load_digits
from dlbook.privacy import DPSGD, dp_sgd_step


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def make_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))


def steppers(make, x, y, C=1.0, sigma=1.0, lr=0.05):
    """name -> a function that takes one training step (each with its own copy of the model)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    loss_fn = nn.CrossEntropyLoss()
    b = len(x)

    m_sgd = make()
    o_sgd = torch.optim.SGD(m_sgd.parameters(), lr=lr)

    def sgd():
        o_sgd.zero_grad()
        loss_fn(m_sgd(x), y).backward()
        o_sgd.step()

    m_vmap = make()
    o_vmap = torch.optim.SGD(m_vmap.parameters(), lr=lr)
    g_vmap = torch.Generator().manual_seed(0)

    def vmap():
        dp_sgd_step(m_vmap, loss_fn, x, y, o_vmap, C, sigma, b, g_vmap)

    m_ghost = make()
    o_ghost = DPSGD(m_ghost, lr=lr, max_norm=C, noise_multiplier=sigma, expected_batch_size=b,
                    generator=torch.Generator().manual_seed(0))

    def ghost():
        o_ghost.zero_grad()
        loss_fn(m_ghost(x), y).backward()
        o_ghost.step()

    m_op = GradSampleModule(make())
    o_op = DPOptimizer(torch.optim.SGD(m_op.parameters(), lr=lr), noise_multiplier=sigma, max_grad_norm=C,
                       expected_batch_size=b)

    def opacus():
        o_op.zero_grad()
        loss_fn(m_op(x), y).backward()
        o_op.step()

    return {"sgd": sgd, "book vmap": vmap, "book ghost": ghost, "opacus": opacus}


def time_steps(fn, steps: int) -> float:
    """Mean ms per step over ``steps`` calls, timed by torch.utils.benchmark (which sets the thread count)."""
    timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.timeit(steps).mean * 1e3


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few seconds: batch 64, 3 rounds of 2 steps, 1 thread")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.batch_size, args.threads = 3, 2, 64, 1
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")   # Opacus warns about its secure-RNG option and hooks
    d = load_digits()
    x, y = d.X_train[:args.batch_size], d.y_train[:args.batch_size]
    results = {}
    print(f"one DP-SGD step, batch {len(x)}, {args.threads} threads, median of {args.repeats} rounds x "
          f"{args.steps} steps (ms per step)")
    print(f"{'model':6} {'sgd':>7} {'book vmap':>10} {'book ghost':>11} {'opacus':>7} "
          f"{'ghost/opacus':>13} {'vmap/opacus':>12} {'ghost/sgd':>10} {'opacus/sgd':>11}")
    for name, make, inputs in (("mlp", make_mlp, x), ("cnn", make_cnn, x.reshape(-1, 1, 8, 8))):
        fns = steppers(make, inputs, y)
        for fn in fns.values():      # warm-up
            fn()
        times = {k: [] for k in fns}
        order = list(fns)
        for r in range(args.repeats):
            for k in order[r % len(order):] + order[:r % len(order)]:
                times[k].append(time_steps(fns[k], args.steps))
        med = {k: statistics.median(v) for k, v in times.items()}
        results[name] = med
        print(f"{name:6} {med['sgd']:7.2f} {med['book vmap']:10.2f} {med['book ghost']:11.2f} {med['opacus']:7.2f} "
              f"{med['book ghost'] / med['opacus']:13.2f} {med['book vmap'] / med['opacus']:12.2f} "
              f"{med['book ghost'] / med['sgd']:10.2f} {med['opacus'] / med['sgd']:11.2f}")
    return results


if __name__ == "__main__":
    main()
