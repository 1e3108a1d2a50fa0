"""Preference losses: ``bradley_terry_loss`` (a reward model), ``dpo_loss`` with ``implicit_reward``, and
``sequence_logprob``, which sums log pi(y | x) over the response tokens only.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "bradley_terry_loss", "sequence_logprob", "dpo_loss", "implicit_reward",
]


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Reward-model loss on preference pairs: mean of -log sigma(r_chosen - r_rejected).

    Under the Bradley-Terry model P(y_w preferred to y_l) = sigma(r(y_w) - r(y_l)); this is
    its negative log-likelihood, averaged over the N pairs.

    Args:
        r_chosen, r_rejected: rewards of the preferred and the rejected response, shape (N,).

    Returns:
        A scalar tensor.
    """
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(f"r_chosen and r_rejected must have the same shape, got {tuple(r_chosen.shape)} and "
                         f"{tuple(r_rejected.shape)}")
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def sequence_logprob(model: nn.Module, prompt: torch.Tensor, response: torch.Tensor,
                     response_mask: torch.Tensor | None = None) -> torch.Tensor:
    """log pi(response | prompt) = sum over response tokens of log p(y_t | prompt, y_<t).

    The prompt's own tokens are context only: their log-probabilities are not counted. The
    model sees prompt + response without its last token (Tp + Tr - 1 positions, so a model
    with block size T fits prompt and response of total length T + 1).

    Args:
        model: a causal LM, ``model(idx)`` -> logits (B, T, V) or a tuple whose first item they are.
        prompt: (B, Tp) token ids, Tp >= 1 (or (Tp,), shared by the batch).
        response: (B, Tr) token ids.
        response_mask: (B, Tr) bool, True for real response tokens (False for padding).

    Returns:
        (B,) summed log-probabilities (differentiable w.r.t. the model's parameters).
    """
    if response.dim() != 2:
        raise ValueError(f"response must have shape (B, Tr), got {tuple(response.shape)}")
    if prompt.dim() == 1:
        prompt = prompt.expand(response.size(0), -1)
    if prompt.dim() != 2 or prompt.size(0) != response.size(0) or prompt.size(1) < 1:
        raise ValueError(f"prompt must have shape (B, Tp) with Tp >= 1 and the response's B, got "
                         f"{tuple(prompt.shape)} for a response of shape {tuple(response.shape)}")
    tp, tr = prompt.size(1), response.size(1)
    out = model(torch.cat([prompt, response[:, :-1]], dim=1))                   # the last token predicts nothing
    logits = out[0] if isinstance(out, tuple) else out                           # (B, Tp+Tr-1, V)
    logits = logits[:, tp - 1:tp + tr - 1]                                      # predicts the response
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    logp = logits.log_softmax(-1)
    token_logp = logp.gather(-1, response[..., None]).squeeze(-1)                # (B, Tr)
    if response_mask is not None:
        token_logp = token_logp * response_mask.to(token_logp.dtype)
    return token_logp.sum(-1)


def implicit_reward(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward beta * (log pi(y``|x) - log pi_ref(y|``x)), same shape as the inputs."""
    return beta * (policy_logps - ref_logps)


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """Direct preference optimization (Rafailov et al. 2023), averaged over N pairs.

    .. math::

        -\\log \\sigma\\Big(\\beta\\big[(\\log\\pi(y_w|x) - \\log\\pi_{ref}(y_w|x))
                              - (\\log\\pi(y_l|x) - \\log\\pi_{ref}(y_l|x))\\big]\\Big)

    The reference log-probabilities come from a frozen copy of the starting policy;
    they are detached here so that no gradient can reach the reference. When the
    policy equals the reference the loss is log 2.

    Args:
        policy_chosen_logps, policy_rejected_logps: (N,) summed response log-probabilities
            under the policy (``sequence_logprob``).
        ref_chosen_logps, ref_rejected_logps: (N,) the same under the reference.
        beta: > 0, the strength of the implicit KL penalty.

    Returns:
        A scalar tensor.
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    shapes = {tuple(t.shape) for t in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                       ref_rejected_logps)}
    if len(shapes) != 1:
        raise ValueError(f"the four log-probability tensors must have one shape (N,), got {sorted(shapes)}")
    margin = (policy_chosen_logps - ref_chosen_logps.detach()) - (policy_rejected_logps - ref_rejected_logps.detach())
    return -F.logsigmoid(beta * margin).mean()
