"""Interpretability (chapter 7): attributions, perturbations, probes and adversarial examples.

Notation: a classifier ``model`` maps a batch ``x`` of shape ``(N, *F)`` (any feature
shape F, e.g. (64,) or (1, 8, 8)) to logits f(x) of shape (N, C). ``target`` names
one class per example (an int, or int64 of shape (N,)); f_t(x) is its logit.
Attributions always explain the *logit* f_t, not the softmax probability (which
saturates: near p = 1 its gradient vanishes however much the input matters), and
are computed with the model in ``eval()``.

* Gradient attributions: ``saliency`` (grad f_t), ``input_x_gradient``
  (x * grad f_t), ``smoothgrad`` (the average over Gaussian-noised copies of x) and
  ``integrated_gradients`` (the path integral from a baseline, whose attributions
  sum to f_t(x) - f_t(baseline) up to the quadrature error).
* Perturbation attributions: ``occlusion`` (slide a patch of baseline values over
  the input) and ``permutation_importance`` (shuffle one feature column on held-out
  data and measure how much a metric drops).
* Probing: ``gpt_hidden_states`` and ``gpt_attention`` collect the residual stream
  and the attention weights of ``dlbook.transformer.GPT``, ``gpt_head_outputs`` what
  each head would write from each key position; ``linear_probe`` trains a
  linear (or one-hidden-layer) classifier on frozen features.
* ``rank_correlation`` (Spearman) compares two attribution maps for sanity checks,
  and ``deletion_curve`` scores a map by deleting its most important features first.
* Adversarial examples within an L-infinity ball of radius eps around x, on the
  cross-entropy loss L(x, y) of the *true* label y, with the model in ``eval()``:
  ``fgsm`` (one step, x + eps sign(grad_x L)) and ``pgd`` (random start, repeated
  signed steps, each followed by a projection onto the ball and onto the valid
  input range [lo, hi]). Chapter 8 builds adversarial training on these two.

Every gradient here is taken with ``torch.autograd.grad`` with respect to the input
only: the model's parameters get no ``.grad``, and the model's train/eval mode is
restored afterwards, so the functions can be called inside a training loop.

Every public name is importable from the package (``from dlbook.interpret import saliency``);
each lives in the module of its section of the chapter: ``gradient_attributions`` (notebook 2),
``perturbation`` (notebooks 3 and 4), ``comparison`` (notebook 4), ``gpt_internals``
(notebooks 1 and 5), ``probing`` (notebook 5) and ``adversarial`` (notebook 6).
"""

from __future__ import annotations

from dlbook.interpret.gradient_attributions import (
    saliency, input_x_gradient, smoothgrad, integrated_gradients, ig_weights, IG_METHODS,
)
from dlbook.interpret.perturbation import (
    occlusion, occlusion_masks, permutation_importance, Importances, deletion_curve,
)
from dlbook.interpret.comparison import rank_correlation
from dlbook.interpret.gpt_internals import gpt_hidden_states, gpt_attention, gpt_head_outputs
from dlbook.interpret.probing import linear_probe, Probe
from dlbook.interpret.adversarial import fgsm, pgd

__all__ = [
    "saliency", "input_x_gradient", "smoothgrad", "integrated_gradients", "ig_weights", "IG_METHODS", "occlusion",
    "occlusion_masks", "permutation_importance", "Importances", "deletion_curve", "rank_correlation",
    "gpt_hidden_states", "gpt_attention", "gpt_head_outputs", "linear_probe", "Probe", "fgsm", "pgd",
]
