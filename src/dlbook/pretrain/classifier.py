"""Transfer to a labelled task: ``SequenceClassifier`` (pooling + layer choice + head, frozen or not)
and ``finetune_classifier``, which trains it through ``dlbook.train.fit``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dlbook._checks import check_int as _check_int
from dlbook.data import tensor_loader
from dlbook.pretrain.representations import combine_layers, hidden_states, pool
from dlbook.train import History, fit

__all__ = [
    "SequenceClassifier", "finetune_classifier",
]


class SequenceClassifier(nn.Module):
    """Backbone + layer choice + pooling + head: the BERT fine-tuning recipe, every choice a knob.

    logits = head(pool(combine_layers(hidden_states(backbone, idx), layers, combine), mask, how))

    Args:
        backbone: an ``MLMEncoder``, ``GPT`` or ``EncoderDecoder``.
        n_classes: number of classes K.
        how: ``"cls"`` or ``"mean"`` pooling (``pool``).
        layers, combine: which hidden states and how to combine them (``combine_layers``).
        head: ``"linear"`` (C' -> K) or ``"mlp"`` (C' -> C' -> K with a tanh, as BERT's pooler).
        freeze: keep the backbone fixed (feature-based transfer / linear probe): its parameters
            get ``requires_grad=False`` (in place: pass ``copy.deepcopy(backbone)`` to keep the
            original trainable) and it runs in eval mode without a graph. ``freeze=False`` leaves
            every ``requires_grad`` as it is (so adapters can freeze what they choose).
        pad_id: padding id used to build the attention mask.

    forward(idx (B, T)) -> logits (B, K); padding (``idx == pad_id``) is masked out.
    """

    def __init__(self, backbone: nn.Module, n_classes: int, how: str = "mean", layers=(-1,), combine: str = "sum",
                 head: str = "linear", freeze: bool = False, pad_id: int = 0):
        super().__init__()
        if how not in ("cls", "mean"):
            raise ValueError(f"how must be 'cls' or 'mean', got {how!r}")
        if head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")
        _check_int("n_classes", n_classes, 2)
        width = backbone.n_embd if hasattr(backbone, "n_embd") else backbone.src_emb.embedding_dim
        width *= len(tuple(layers)) if combine == "concat" else 1
        self.backbone, self.how, self.layers, self.combine, self.freeze, self.pad_id = (
            backbone, how, tuple(layers), combine, freeze, getattr(backbone, "pad_id", pad_id))
        self.head = (nn.Linear(width, n_classes) if head == "linear" else
                     nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, n_classes)))
        if freeze:
            backbone.requires_grad_(False)

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, C') before the head."""
        mask = idx != self.pad_id
        if self.freeze:
            self.backbone.eval()
            with torch.no_grad():
                states = hidden_states(self.backbone, idx, mask, self.pad_id)
        else:
            states = hidden_states(self.backbone, idx, mask, self.pad_id)
        return pool(combine_layers(states, self.layers, self.combine), mask, self.how)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(idx))


def finetune_classifier(model: nn.Module, train: tuple, val: tuple | None = None, epochs: int = 10,
                        lr: float = 1e-3, batch_size: int = 32, weight_decay: float = 0.01, seed: int = 0,
                        head_lr: float | None = None, progress: bool = False) -> History:
    """Train a classifier (usually a ``SequenceClassifier``) with ``dlbook.train.fit``.

    AdamW over the parameters that require gradients (a frozen backbone's do not), cross-entropy,
    shuffled mini-batches from ``dlbook.data.tensor_loader`` seeded with ``seed``.

    Args:
        train, val: ``(X (N, T) ids, y (N,) labels)``; val is evaluated after every epoch.
        head_lr: a separate learning rate for parameters outside ``model.backbone`` (default ``lr``).

    Returns:
        fit's History (``history.epochs[-1]["val_accuracy"]`` with a val set).
    """
    _check_int("epochs", epochs)
    X, y = train
    if len(X) != len(y):
        raise ValueError(f"train X and y differ in length: {len(X)} vs {len(y)}")
    device = next(model.parameters()).device
    backbone = getattr(model, "backbone", None)
    in_backbone = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    body = [p for p in model.parameters() if p.requires_grad and id(p) in in_backbone]
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in in_backbone]
    groups = [{"params": rest, "lr": lr if head_lr is None else head_lr}] + ([{"params": body, "lr": lr}] if body else [])
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    train_loader = tensor_loader(X.to(device), y.to(device), batch_size=batch_size, seed=seed)
    val_loader = None if val is None else tensor_loader(val[0].to(device), val[1].to(device), batch_size=256,
                                                        shuffle=False)
    return fit(model, nn.CrossEntropyLoss(), opt, train_loader, val_loader, epochs=epochs, progress=progress)
