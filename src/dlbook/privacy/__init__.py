"""Privacy and security from scratch (chapter 8): DP-SGD, accounting, leakage attacks, secure aggregation.

Differential privacy. A randomized algorithm M is (epsilon, delta)-DP if for every pair of
neighbouring datasets D, D' (here: D' is D with one record added or removed) and every set S
of outcomes

.. math::

    P[M(D) \\in S] \\le e^{\\varepsilon} P[M(D') \\in S] + \\delta .

Every public name is importable from the package (``from dlbook.privacy import DPSGD``); each
lives in the module of its section of the chapter:

* ``dp_sgd`` (notebook 3): per-example gradients ``per_sample_grads``, ``per_example_norms``,
  ``clip_and_noise``, ``dp_sgd_step`` (the definition, step by step), the optimizer ``DPSGD``
  (ghost clipping, for ``dlbook.train.fit``) and ``poisson_loader`` / ``PoissonBatches``;
* ``accounting`` (notebook 4): ``rdp_sampled_gaussian``, ``rdp_to_epsilon``, ``epsilon`` and
  ``noise_for_epsilon`` (Renyi DP of the sampled Gaussian mechanism, Mironov et al. 2019);
* ``mechanisms`` (notebook 2): ``laplace_mechanism``, ``gaussian_sigma`` and ``gaussian_mechanism``;
* ``attacks`` (notebook 1): ``per_example_loss``, ``roc_auc``, ``roc_curve``, ``tpr_at_fpr``,
  ``membership_inference_auc``, and ``sequence_log_likelihood``, ``exposure``, ``canary_exposure``;
* ``paillier`` (notebook 5): a toy ``Paillier`` cryptosystem (small keys: NOT for real use);
* ``secure_aggregation`` (notebook 5): fixed-point ``encode_fixed_point``/``decode_fixed_point``
  modulo 2^k and pairwise additive masks (``pairwise_mask``, ``mask_update``, ``secure_sum``,
  ``recover_dropouts``);
* ``federated`` (notebook 5): ``run_federated``, federated averaging with secure aggregation in
  real processes (``torch.distributed``, gloo), and ``federated_processes``.

``tests/test_privacy.py`` checks the accountant against Opacus's ``RDPAccountant`` (1% over a grid),
one noiseless step of ``dp_sgd_step`` and of ``DPSGD`` against Opacus's, and per-example gradients
against a loop in float64.
"""

from __future__ import annotations

from dlbook.privacy.accounting import DEFAULT_ORDERS, rdp_sampled_gaussian, rdp_to_epsilon, epsilon, noise_for_epsilon
from dlbook.privacy.dp_sgd import (
    per_sample_grads, per_example_norms, clip_and_noise, dp_sgd_step, DPSGD, poisson_loader, PoissonBatches,
)
from dlbook.privacy.mechanisms import laplace_mechanism, gaussian_sigma, gaussian_mechanism
from dlbook.privacy.attacks import (
    per_example_loss, roc_curve, roc_auc, tpr_at_fpr, membership_inference_auc, sequence_log_likelihood, exposure,
    canary_exposure,
)
from dlbook.privacy.paillier import Paillier
from dlbook.privacy.secure_aggregation import (
    encode_fixed_point, decode_fixed_point, pairwise_mask, mask_update, secure_sum, recover_dropouts,
)
from dlbook.privacy.federated import run_federated, federated_processes

__all__ = [
    "per_sample_grads", "per_example_norms", "clip_and_noise", "dp_sgd_step", "DPSGD", "poisson_loader",
    "PoissonBatches", "DEFAULT_ORDERS", "rdp_sampled_gaussian", "rdp_to_epsilon", "epsilon", "noise_for_epsilon",
    "laplace_mechanism", "gaussian_sigma", "gaussian_mechanism", "per_example_loss", "roc_curve", "roc_auc",
    "tpr_at_fpr", "membership_inference_auc", "sequence_log_likelihood", "exposure", "canary_exposure", "Paillier",
    "encode_fixed_point", "decode_fixed_point", "pairwise_mask", "mask_update", "secure_sum", "recover_dropouts",
    "run_federated", "federated_processes",
]
