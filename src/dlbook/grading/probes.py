"""Trusted probes: autograd and training through a learner's code, answered with data.

A test in an exercise set never backpropagates through learner code itself, nor hands learner objects to torch
(under the instructor's grader they live in another process). It asks a probe instead; the probe runs where the
learner's code is (in the notebook for ``check()``, in the submission's sandbox for ``dlbook-grade``) and
returns tensors, numbers and dicts of them::

    from dlbook.grading import probes

    out, (dx,) = probes.grad(ns.my_gelu, x)                     # output and d sum(out) / dx
    out, grads = probes.module_grads(ns.MyLinear(4, 3), x)      # output and {parameter name: gradient}
    losses, state = probes.train(model, x, y, loss="mse", lr=0.1, steps=5)

What a probe proves: that the learner's objects, driven by the probe, give these numbers. What it cannot prove:
how they were computed (the learner's process runs the probe, so a learner who calls the library, or who
patches torch in their own process, still answers with whatever those give). Compare the numbers with a
reference computed in the test, as for any other answer. In the learner's process too, a probe hands the
learner's code copies of the test's tensors (``dlbook.grading.inputs``).
"""

from __future__ import annotations

import torch

from dlbook.grading.inputs import fresh, unwrap

__all__ = ["grad", "module_grads", "train", "state_dict", "load_state_dict"]


def _remote(obj):
    from dlbook.grading.proxy import RemoteObject

    return obj if isinstance(obj, RemoteObject) else None


def grad(fn, *args, wrt=(0,), grad_output=None):
    """``fn(*args)`` and the gradient of ``<grad_output, fn(*args)>`` with respect to ``args[i]`` for i in ``wrt``.

    Args:
        fn: the learner's function (tensors in, one tensor out).
        args: its arguments; those listed in ``wrt`` must be floating-point tensors.
        wrt: indices of the arguments to differentiate with respect to.
        grad_output: the output's weights (same shape as the output); default all ones (the gradient of the sum).

    Returns:
        ``(output, grads)``: the detached output and a tuple with one gradient (or None) per index in ``wrt``.
    """
    if _remote(fn) is not None:
        return fn._probe("grad", [fn, list(args), list(wrt), grad_output])
    return _grad(fn, fresh(list(args)), list(wrt), grad_output)


def module_grads(module, *args, grad_output=None):
    """``module(*args)`` and the gradient of ``<grad_output, output>`` for every parameter of ``module``.

    Returns:
        ``(output, {parameter name: gradient})`` (parameters without a gradient are left out).
    """
    if _remote(module) is not None:
        return module._probe("module_grads", [module, list(args), grad_output])
    return _module_grads(unwrap(module), fresh(list(args)), grad_output)


def train(module, inputs, targets, loss: str = "mse", lr: float = 0.1, steps: int = 1, optimizer: str = "sgd"):
    """``steps`` full-batch steps of ``optimizer`` (``"sgd"`` or ``"adam"``) on ``loss`` (``"mse"`` or
    ``"cross_entropy"``) for the learner's ``module``.

    Returns:
        ``(losses, state)``: the loss before each step (floats) and the final ``state_dict`` (name -> tensor).
    """
    if _remote(module) is not None:
        return module._probe("train", [module, inputs, targets, loss, lr, steps, optimizer])
    return _train(unwrap(module), fresh(inputs), fresh(targets), loss, lr, steps, optimizer)


def state_dict(module) -> dict:
    """The learner module's ``state_dict()`` as a plain dict of detached tensors."""
    if _remote(module) is not None:
        return module._probe("state_dict", [module])
    return _state_dict(unwrap(module))


def load_state_dict(module, state: dict, strict: bool = True) -> None:
    """Load ``state`` (name -> tensor) into the learner's module (e.g. known weights before a forward pass)."""
    if _remote(module) is not None:
        return module._probe("load_state_dict", [module, state, strict])
    return _load_state_dict(unwrap(module), fresh(state), strict)


# ---------------------------------------------------------------------------------------------- implementations
# (these run where the learner's code is)


def _grad(fn, args, wrt, grad_output):
    if not isinstance(args, list) or not all(isinstance(i, int) and 0 <= i < len(args) for i in wrt):
        raise ValueError("wrt must hold indices of the arguments")
    args = [a.detach().clone().requires_grad_(True) if i in wrt else a for i, a in enumerate(args)]
    with torch.enable_grad():
        out = fn(*args)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the function returned {type(out).__name__}, not a tensor")
        weights = torch.ones_like(out) if grad_output is None else grad_output.to(out.dtype)
        grads = torch.autograd.grad(out, [args[i] for i in wrt], grad_outputs=weights, allow_unused=True)
    return out.detach(), tuple(None if g is None else g.detach() for g in grads)


def _module_grads(module, args, grad_output):
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(module).__name__}")
    module.zero_grad(set_to_none=True)
    with torch.enable_grad():
        out = module(*args)
        weights = torch.ones_like(out) if grad_output is None else grad_output.to(out.dtype)
        out.backward(weights)
    grads = {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return out.detach(), grads


def _train(module, inputs, targets, loss, lr, steps, optimizer):
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(module).__name__}")
    losses = {"mse": torch.nn.functional.mse_loss, "cross_entropy": torch.nn.functional.cross_entropy}
    optimizers = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}
    if loss not in losses or optimizer not in optimizers:
        raise ValueError(f"loss must be one of {sorted(losses)} and optimizer one of {sorted(optimizers)}")
    opt = optimizers[optimizer](module.parameters(), lr=float(lr))
    history = []
    with torch.enable_grad():
        for _ in range(int(steps)):
            opt.zero_grad(set_to_none=True)
            value = losses[loss](module(inputs), targets)
            value.backward()
            opt.step()
            history.append(float(value.detach()))
    return history, _state_dict(module)


def _state_dict(module) -> dict:
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(module).__name__}")
    return {name: t.detach().clone() for name, t in module.state_dict().items()}


def _load_state_dict(module, state, strict):
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(module).__name__}")
    module.load_state_dict(state, strict=bool(strict))


_REMOTE = {"grad": _grad, "module_grads": _module_grads, "train": _train, "state_dict": _state_dict,
           "load_state_dict": _load_state_dict}


def remote_probe(name: str):
    """The implementation the submission's side runs for probe ``name``."""
    if name not in _REMOTE:
        raise ValueError(f"no probe {name!r}")
    return _REMOTE[name]
