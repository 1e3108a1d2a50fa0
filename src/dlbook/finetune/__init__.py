"""Adapting a pretrained model cheaply, and aligning it with preferences (chapter 4, part 2).

Parameter-efficient fine-tuning (PEFT) freezes the pretrained weights and trains a
few new ones. Notation: a linear layer maps d_in = k features to d_out = d; B batch,
T length, C model width, H heads, D = C // H head width, L layers, P prefix/prompt length.

* ``LoRALinear`` (low-rank adaptation): h = W0 x + b0 + (alpha / r) B A x with W0, b0
  frozen, A (r, k) random and B (d, r) zero, so the wrapped layer equals the base at
  initialization; ``merge()`` folds (alpha / r) B A into W0 (no extra latency),
  ``unmerge()`` takes it out again. ``add_lora`` wraps chosen linear layers of a model
  by name (the matching rule of peft's ``target_modules``) and freezes everything else.
* ``Adapter``: a bottleneck MLP with a residual, h + W_up act(W_down h), W_up = 0 at
  initialization (the identity); ``add_adapters`` inserts one after the attention and
  one after the FFN of every ``TransformerBlock`` (Houlsby et al. 2019).
* ``PrefixAttention`` / ``add_prefix`` (prefix tuning): P trainable key and value
  vectors per head at *every* layer, attended to by every query.
* ``PromptTuning`` (prompt tuning): P trainable input embeddings in front of the
  tokens, nothing else trained.
* ``digit_task`` (a family of toy sequence tasks: copy x, reverse it and/or shift every
  digit), ``train_steps`` (AdamW on the trainable parameters only) and ``answer_accuracy``:
  what the chapter's experiments adapt and measure.
* ``count_trainable``; the preference losses ``bradley_terry_loss`` (reward model)
  and ``dpo_loss``; ``sequence_logprob`` sums log pi(y | x) over response tokens only.

The models are ``dlbook.transformer`` models (``GPT`` and its ``TransformerBlock``);
anything with the same attribute names (``tok_emb``, ``blocks``, ``ln_f``, ``head``)
plugs in. ``tests/test_finetune.py`` checks LoRA against the ``peft`` library.

Every public name is importable from the package (``from dlbook.finetune import add_lora``);
each lives in its own module: ``lora``, ``adapters``, ``prefix_tuning`` (prefix and prompt
tuning), ``trainable`` (``freeze``, ``count_trainable``), ``preferences`` and ``digit_tasks``.
"""

from __future__ import annotations

from dlbook.finetune.trainable import freeze, count_trainable
from dlbook.finetune.lora import LoRALinear, add_lora, merge_lora, unmerge_lora
from dlbook.finetune.adapters import Adapter, add_adapters
from dlbook.finetune.prefix_tuning import PrefixAttention, add_prefix, PromptTuning
from dlbook.finetune.preferences import bradley_terry_loss, sequence_logprob, dpo_loss, implicit_reward
from dlbook.finetune.digit_tasks import (
    SEP, DIGIT_TASKS, digit_task, digit_mixture, train_steps, answer_accuracy, pretrain_digit_gpt,
)

__all__ = [
    "LoRALinear", "add_lora", "merge_lora", "unmerge_lora", "freeze", "Adapter", "add_adapters", "PrefixAttention",
    "add_prefix", "PromptTuning", "count_trainable", "bradley_terry_loss", "sequence_logprob", "dpo_loss",
    "implicit_reward", "SEP", "DIGIT_TASKS", "digit_task", "digit_mixture", "train_steps", "answer_accuracy",
    "pretrain_digit_gpt",
]
