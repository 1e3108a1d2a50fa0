"""Regularization: everything chapter 5 builds, for any ``nn.Module`` (chapter 5).

Regularization is any change to learning that aims at the error on unseen data
rather than on the training set. This package holds the pieces later chapters
reuse::

    Dropout(p), dropout(x, p, training)        inverted dropout, drop probability p
    l2_penalty(params), l1_penalty(params)     (1/2) sum w^2 and sum ``|w|``
    soft_threshold(w, t)                       the proximal step of t * ||w||_1 (exact zeros)
    decay_groups(model, weight_decay)          optimizer groups: no decay on biases and norm parameters
    smoothed_cross_entropy(logits, y, eps)     cross-entropy against (1 - eps) onehot + eps / K
    mixup(x, y, alpha, num_classes)            convex combinations of examples and of their targets
    EarlyStopping(patience), fit_early_stopping(...)   keep and restore the best weights
    expected_calibration_error, reliability_curve     top-label calibration in equal-width bins
    mc_dropout_predict, predictive_entropy, auroc     dropout at test time as an uncertainty estimate
    shift_images, rotate_images, augment_digits       label-preserving augmentation of small images
    map_batches(loader, fn)                    a loader whose batches pass through fn (augmentation, mixup)
    random_relu_features, ridge_regression     the random-features model of double descent

Conventions: ``p`` is the probability of *dropping* a unit, as in
``torch.nn.Dropout``; the dropout paper (Srivastava et al., 2014) writes p for
the probability of *keeping* it. Probabilities ``probs`` are (N, K) rows that
sum to 1; class ids ``target`` are int64 of shape (N,).

Every public name is importable from the package (``from dlbook.regularization import Dropout``);
each lives in the module of its section of the chapter: ``penalties`` (notebooks 2 and 3),
``dropout`` (notebook 4), ``early_stopping`` and ``augmentation`` (notebook 5), ``smoothing``,
``mixup`` and ``calibration`` (notebook 6) and ``double_descent`` (notebook 7).
"""

from __future__ import annotations

from dlbook.regularization.dropout import Dropout, dropout
from dlbook.regularization.penalties import l1_penalty, l2_penalty, soft_threshold, decay_groups
from dlbook.regularization.smoothing import smoothed_targets, smoothed_cross_entropy
from dlbook.regularization.mixup import mixup, _beta_sample
from dlbook.regularization.early_stopping import EarlyStopping, fit_early_stopping
from dlbook.regularization.calibration import (
    expected_calibration_error, reliability_curve, predictive_entropy, mc_dropout_predict, auroc,
)
from dlbook.regularization.augmentation import (
    map_batches, shift_images, rotate_images, random_shift, random_rotation, augment_digits,
)
from dlbook.regularization.double_descent import random_relu_features, ridge_regression

__all__ = [
    "Dropout", "dropout", "l1_penalty", "l2_penalty", "soft_threshold", "decay_groups", "smoothed_targets",
    "smoothed_cross_entropy", "mixup", "map_batches", "EarlyStopping", "fit_early_stopping",
    "expected_calibration_error", "reliability_curve", "predictive_entropy", "mc_dropout_predict", "auroc",
    "shift_images", "rotate_images", "random_shift", "random_rotation", "augment_digits", "random_relu_features",
    "ridge_regression",
]
