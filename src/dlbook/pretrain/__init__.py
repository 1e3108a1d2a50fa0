"""Pretraining objectives and transfer (chapter 4, part 1): one model trained on unlabelled text, then adapted.

Notation as in ``dlbook.transformer``: B batch, T length, C = ``n_embd`` width, L layers,
V vocabulary size.

* ``PretrainTokenizer``: characters plus the special tokens the objectives need
  ([PAD], [CLS], [SEP], [MASK], [UNK] and T5-style sentinels).
* ``docstring_task`` / ``pretraining_text``: the chapter's downstream task (which module a
  standard-library docstring comes from), split by docstring *before* pretraining, and an
  unlabelled pretraining corpus that holds none of the validation or test docstrings.
* ``mask_tokens`` (BERT's 80/10/10 masking), ``span_corrupt`` / ``span_restore`` (T5's span
  corruption) and ``pad_sequences``.
* ``MLMEncoder``: a bidirectional encoder over ``dlbook.transformer.Encoder``'s blocks with
  every layer's hidden states; ``pool`` ([CLS] or mask-aware mean) and ``combine_layers``.
* ``hidden_states``: the same per-layer states from a ``GPT`` or an ``EncoderDecoder``'s encoder.
* ``SequenceClassifier`` (pooling + layer choice + head, frozen or not) and
  ``finetune_classifier``, which trains through ``dlbook.train.fit``.
* ``pretrain_mlm`` / ``pretrain_clm`` / ``pretrain_span`` (or ``pretrain(objective=...)``) and
  ``pretrained``, which trains once and caches the weights (written atomically).

Every public name is importable from the package (``from dlbook.pretrain import pretrained``);
each lives in its own module: ``tokenizer``, ``corpus`` (the docstring task and the corpus,
notebook 1), ``objectives`` (notebook 2), ``representations`` (``MLMEncoder``, ``hidden_states``,
pooling; notebook 3), ``classifier`` (transfer), ``training`` (the pretraining loops) and
``checkpoints`` (``build_model``, ``pretrained``) and ``shipped`` (re-creating the weights that ship in
``dlbook.weights``).
"""

from __future__ import annotations

from dlbook.pretrain.tokenizer import PretrainTokenizer
from dlbook.pretrain.corpus import DocTask, docstring_task, pretraining_text, module_docstrings, TASK_GROUPS
from dlbook.pretrain.objectives import mask_tokens, span_corrupt, span_restore, pad_sequences, IGNORE_INDEX
from dlbook.pretrain.representations import pool, combine_layers, MLMEncoder, hidden_states
from dlbook.pretrain.classifier import SequenceClassifier, finetune_classifier
from dlbook.pretrain.training import pretrain_mlm, pretrain_clm, pretrain_span, pretrain
from dlbook.pretrain.checkpoints import pretrained, build_model
from dlbook.pretrain.shipped import replay, train_weights

__all__ = [
    "PretrainTokenizer", "DocTask", "docstring_task", "pretraining_text", "mask_tokens", "span_corrupt",
    "span_restore", "pad_sequences", "module_docstrings", "TASK_GROUPS", "pool", "combine_layers", "MLMEncoder",
    "hidden_states", "SequenceClassifier", "finetune_classifier", "pretrain_mlm", "pretrain_clm", "pretrain_span",
    "pretrain", "pretrained", "IGNORE_INDEX", "build_model", "replay", "train_weights",
]
