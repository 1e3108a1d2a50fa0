"""The toy suite the chapter's fine-tuning experiments adapt and measure.

``digit_task`` (copy x, reverse it and/or shift every digit; ``DIGIT_TASKS``, ``SEP``),
``digit_mixture``, ``pretrain_digit_gpt`` (the "pretrained" model), ``train_steps`` (AdamW on the
trainable parameters only) and ``answer_accuracy``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from dlbook.finetune._shared import _check_positive_int
from dlbook.transformer import GPT

__all__ = [
    "SEP", "DIGIT_TASKS", "digit_task", "digit_mixture", "train_steps", "answer_accuracy", "pretrain_digit_gpt",
]


#: Token id of the separator between input and answer; digits are 0..9, task tokens start at 11.
SEP = 10


#: The suite of digit tasks as (reverse, shift) pairs; task i is named by token 11 + i.
DIGIT_TASKS = tuple((reverse, shift) for reverse in (False, True) for shift in range(5))


def digit_task(n: int, length: int = 4, reverse: bool = False, shift: int = 0, task_token: int = 11,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples of one digit-transformation task as language-model inputs and targets.

    A sequence is ``[task_token, x_1..x_L, SEP, y_1..y_L]`` with x uniform random digits and
    y = (x reversed if ``reverse``) + ``shift`` mod 10. Inputs are the sequence without its
    last token, targets the sequence shifted by one, with -100 (ignored by
    ``F.cross_entropy``, hence by ``GPT``'s loss) everywhere but on the answer digits.

    Args:
        n: number of examples.
        length: L, digits per input.
        reverse, shift: the task.
        task_token: the id that names the task (>= 11 by convention).
        generator: for the random digits.

    Returns:
        inputs (n, 2L + 1) and targets (n, 2L + 1), int64.
    """
    _check_positive_int("n", n)
    _check_positive_int("length", length)
    if isinstance(shift, bool) or not isinstance(shift, int):
        raise TypeError(f"shift must be an int, got {type(shift).__name__}")
    x = torch.randint(0, 10, (n, length), generator=generator)
    y = ((x.flip(1) if reverse else x) + shift) % 10
    seq = torch.cat([torch.full((n, 1), task_token), x, torch.full((n, 1), SEP), y], dim=1)   # (n, 2L + 2)
    targets = seq[:, 1:].clone()
    targets[:, :length + 1] = -100
    return seq[:, :-1], targets


def digit_mixture(tasks: Sequence[int], n: int, length: int = 4,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n examples drawn evenly at random from tasks of ``DIGIT_TASKS`` (indices), each named by token 11 + i.

    Returns inputs and targets (n, 2L + 1) as ``digit_task``.
    """
    tasks = list(tasks)
    if not tasks or any(not 0 <= i < len(DIGIT_TASKS) for i in tasks):
        raise ValueError(f"tasks must be indices into DIGIT_TASKS (0..{len(DIGIT_TASKS) - 1}), got {tasks}")
    which = torch.randint(0, len(tasks), (n,), generator=generator)
    xs, ys = zip(*(digit_task(n, length, *DIGIT_TASKS[i], task_token=11 + i, generator=generator) for i in tasks))
    rows = torch.arange(n)
    return torch.stack(xs)[which, rows], torch.stack(ys)[which, rows]


def pretrain_digit_gpt(tasks: Sequence[int], steps: int = 600, length: int = 4, n_embd: int = 64, n_layer: int = 2,
                       n_head: int = 4, lr: float = 3e-3, batch_size: int = 64, seed: int = 0,
                       device=None) -> nn.Module:
    """A small ``GPT`` trained from scratch on a mixture of digit tasks: the chapter's "pretrained model".

    Vocabulary: 10 digits, ``SEP`` and one token per task of ``DIGIT_TASKS`` (21 in all);
    block size 2L + 1. Initialized with std 0.125 (about 1/sqrt(width): GPT-2's 0.02 learns
    slowly at width 64). 600 steps take about 5 s of one CPU thread.

    Args:
        tasks: indices into ``DIGIT_TASKS`` to train on (leave some out to adapt to later).
        steps, lr, batch_size: ``train_steps`` on fresh random batches of ``digit_mixture``.
        seed: of the initialization and the data.
        device: where the model lives.

    Returns:
        The trained ``GPT`` (in train mode).
    """
    torch.manual_seed(seed)
    model = GPT(vocab_size=11 + len(DIGIT_TASKS), block_size=2 * length + 1, n_layer=n_layer, n_head=n_head,
                n_embd=n_embd).to(device)
    model.reset_parameters(std=0.125)
    g = torch.Generator().manual_seed(seed)

    def batches(step):
        x, y = digit_mixture(tasks, batch_size, length, generator=g)
        return x.to(device), y.to(device)

    train_steps(model, batches, steps, lr)
    return model


def train_steps(model: nn.Module, batches, steps: int, lr: float, weight_decay: float = 0.0,
                clip_grad_norm: float | None = 1.0) -> list[float]:
    """AdamW on the *trainable* parameters of a GPT-like model, one batch per step.

    Args:
        model: ``model(x, y)`` -> (logits, loss), like ``dlbook.transformer.GPT`` or ``PromptTuning``.
        batches: a callable ``batches(step)`` -> (x, y) on the model's device.
        steps: number of optimizer steps.
        lr: constant learning rate.
        weight_decay, clip_grad_norm: as in ``torch.optim.AdamW`` / ``clip_grad_norm_`` (None: no clipping).

    Returns:
        The training loss of every step.
    """
    _check_positive_int("steps", steps)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model.train()
    losses = []
    for step in range(steps):
        x, y = batches(step)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(params, clip_grad_norm)
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def answer_accuracy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int = 1024) -> float:
    """Fraction of examples whose every scored target (targets != -100) is the argmax prediction.

    Args:
        model: ``model(x)`` -> logits (B, T, V) or (logits, ...).
        inputs, targets: (N, T) as from ``digit_task`` (teacher forcing: each answer digit is
            predicted from the true earlier digits).
    """
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(inputs), batch_size):
        out = model(inputs[i:i + batch_size])
        logits = out[0] if isinstance(out, tuple) else out
        y = targets[i:i + batch_size]
        ok = (logits.argmax(-1) == y) | (y == -100)
        correct += int(ok.all(dim=1).sum())
    model.train(was_training)
    return correct / len(inputs)
