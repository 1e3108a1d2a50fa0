"""How does the initialization scale of dlbook.transformer.GPT change what it learns?

Two measurements, each over several seeds, for weights drawn with std c / sqrt(C)
(C the width; c = 1 is dlbook's default, and GPT-2's fixed 0.02 is also run):

1. Language modelling: chapter 3 notebook 4's recipe (character-level pydoc text,
   block 32, batch 32, AdamW at lr 5e-3 with warmup and cosine decay, ``--steps``
   steps) at widths 16, 32 (one block) and 64 (two blocks). Printed: the first
   training loss and the held-out loss (nats/char, 1,000 windows) per seed and the
   mean.
2. Associative recall (the task of chapter 4 notebook 5): each sequence carries its
   own random map from 8 keys to 8 values as ``key value key value ...`` pairs; a
   2-block width-64 GPT with rotary positions is trained on the value positions.
   Printed: the lookup accuracy (query key among the 8 shown; chance 1/8) every
   ``--recall-steps / 10`` steps. Staying near 0.125 means the model sits on the
   plateau of guessing among the values.

Figures are printed, never asserted.

    python benchmarks/gpt_init.py [--seeds 3] [--steps 600] [--recall-steps 1500] [--threads 1]
    python benchmarks/gpt_init.py --quick     # seconds: one seed, a few steps (make test runs it)
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
import torch.nn.functional as F

from dlbook.data import CharTokenizer, key_value_sequences, pydoc_text, split_ids
from dlbook.transformer import GPT, evaluate_lm, train_lm

N_KEYS, N_VALS, PAIRS = 8, 8, 12


def init_std(c: float | None, width: int) -> float:
    """c None stands for GPT-2's fixed 0.02."""
    return 0.02 if c is None else c / math.sqrt(width)


def label(c: float | None) -> str:
    return "0.02" if c is None else f"{c:g}/sqrt(C)"


def language_modelling(cs, seeds, steps) -> None:
    text = pydoc_text()
    tok = CharTokenizer(text)
    train_ids, val_ids = split_ids(tok.encode(text), val_frac=0.1)
    sizes = {"1 block, width 16": (1, 16), "1 block, width 32": (1, 32), "2 blocks, width 64": (2, 64)}
    print(f"language modelling, {steps} steps, held-out loss (nats/char), log V = {math.log(tok.vocab_size):.3f}")
    for name, (n_layer, width) in sizes.items():
        for c in cs:
            first, held_out = [], []
            for seed in seeds:
                torch.manual_seed(seed)
                model = GPT(tok.vocab_size, block_size=32, n_layer=n_layer, n_head=4, n_embd=width)
                model.reset_parameters(init_std(c, width))
                losses = train_lm(model, train_ids, steps=steps, batch_size=32, lr=5e-3, seed=seed)
                first.append(losses[0])
                held_out.append(evaluate_lm(model, val_ids, max_windows=1000))
            spread = f" +- {statistics.stdev(held_out):.3f}" if len(held_out) > 1 else ""
            print(f"  {name:20s} std {label(c):12s} first loss {statistics.mean(first):.3f}  held out "
                  + " ".join(f"{v:.3f}" for v in held_out) + f"  mean {statistics.mean(held_out):.3f}{spread}")


@torch.no_grad()
def lookup_accuracy(model, shown: int = 8, n: int = 400) -> float:
    g = torch.Generator().manual_seed(12345)
    seq = key_value_sequences(n, shown, N_KEYS, N_VALS, generator=g)
    j = torch.randint(shown, (n,), generator=g)
    query, answer = seq[torch.arange(n), 2 * j], seq[torch.arange(n), 2 * j + 1]
    logits = model(torch.cat([seq, query[:, None]], dim=1))[0][:, -1]
    return (logits.argmax(-1) == answer).float().mean().item()


def associative_recall(cs, seeds, steps) -> None:
    every = max(1, steps // 10)
    print(f"associative recall, width 64, rope, lookup accuracy every {every} steps (chance 0.125)")
    for c in cs:
        for seed in seeds:
            torch.manual_seed(seed)
            model = GPT(N_KEYS + N_VALS, 2 * PAIRS, n_layer=2, n_head=4, n_embd=64, pos="rope")
            model.reset_parameters(init_std(c, 64))
            opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
            g, history = torch.Generator().manual_seed(seed), []
            for step in range(steps + 1):
                if step % every == 0:
                    history.append(lookup_accuracy(model))
                if step == steps:
                    break
                seq = key_value_sequences(64, PAIRS, N_KEYS, N_VALS, generator=g)
                logits, _ = model(seq[:, :-1])                     # position 2i predicts value i
                loss = F.cross_entropy(logits[:, 0::2].flatten(0, 1), seq[:, 1::2].flatten())
                opt.zero_grad()
                loss.backward()
                opt.step()
            print(f"  std {label(c):12s} seed {seed}: " + " ".join(f"{a:.2f}" for a in history))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--recall-steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="seconds: proves the benchmark still runs")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps, args.recall_steps = 1, 5, 10
    torch.set_num_threads(args.threads)
    seeds = range(args.seeds)
    language_modelling([None, 0.25, 0.5, 1.0, 1.5], seeds, args.steps)
    associative_recall([None, 0.5, 1.0, 1.6], seeds, args.recall_steps)


if __name__ == "__main__":
    main()
