"""Tests of dlbook.train: fit equals a hand-written loop, checkpoints resume exactly, bad arguments teach."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from torch import nn

from dlbook.data import tensor_loader
from dlbook.plot import plot_history
from dlbook.data import TensorBatches
from dlbook.train import History, accuracy, evaluate, fit, load_checkpoint, save_checkpoint


def blobs(n=96, d=5, classes=3, seed=0):
    """A small 3-class problem: x of shape (n, d), y of shape (n,)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centers = 3 * torch.randn(classes, d, generator=g)
    return centers[y] + torch.randn(n, d, generator=g), y


def mlp(seed=0, d=5, classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, classes))


def hand_loop(model, loader, optimizer, epochs, clip=None, scheduler=None):
    """The loop of fit's docstring, written out by hand: the reference fit must equal."""
    losses = []
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            losses.append(loss.item())
    return losses


def test_fit_equals_hand_written_loop_bit_for_bit():
    """fit does exactly the optimizer steps of a bare loop: same losses, same weights (dropout RNG included)."""
    X, y = blobs()
    ref = mlp()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(1)
    ref_losses = hand_loop(ref, tensor_loader(X, y, batch_size=16, seed=3), opt, epochs=3)

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(1)
    h = fit(model, nn.CrossEntropyLoss(), opt, tensor_loader(X, y, batch_size=16, seed=3), epochs=3, progress=False)
    assert h.step_loss == pytest.approx(ref_losses, abs=0, rel=1e-7)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_history_shapes_and_loss_falls():
    """History has one loss per step, one dict per epoch with the contract's keys, and the loss falls."""
    X, y = blobs(n=192)
    X, y, Xv, yv = X[:96], y[:96], X[96:], y[96:]
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    h = fit(model, nn.CrossEntropyLoss(), opt, tensor_loader(X, y, batch_size=32, drop_last=False),
            tensor_loader(Xv, yv, batch_size=50, shuffle=False), epochs=4, progress=True)
    assert isinstance(h, History)
    assert len(h.step_loss) == 4 * 3 and all(isinstance(v, float) for v in h.step_loss)
    assert [e["epoch"] for e in h.epochs] == [1, 2, 3, 4]
    assert {"epoch", "train_loss", "val_loss", "val_accuracy", "lr", "time", "steps"} <= set(h.epochs[0])
    assert h.epochs[-1]["train_loss"] < h.epochs[0]["train_loss"]
    assert h.epochs[-1]["val_accuracy"] > 0.9
    assert h.wall_time > 0 and h.samples_per_s > 0 and h.n_samples == 4 * 96
    assert h.series("val_accuracy")[-1] == h.epochs[-1]["val_accuracy"]
    assert "History(4 epochs" in repr(h)
    with pytest.raises(KeyError, match="known keys"):
        h.series("nope")


def test_train_loss_is_sample_weighted_mean_of_step_losses():
    """An epoch's train_loss weights each batch by its size (the last batch here is smaller)."""
    X, y = blobs(n=40)
    model = mlp()
    h = fit(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.0),
            tensor_loader(X, y, batch_size=16, shuffle=False), epochs=1, progress=False)
    sizes = [16, 16, 8]
    expected = sum(l * b for l, b in zip(h.step_loss, sizes)) / 40
    assert h.epochs[0]["train_loss"] == pytest.approx(expected, rel=1e-6)


def test_evaluate_matches_direct_computation_and_restores_mode():
    """evaluate's loss and accuracy equal those of one full-batch forward pass; the train flag is kept."""
    X, y = blobs()
    model = mlp()
    model.train()
    scores = evaluate(model, tensor_loader(X, y, batch_size=25, shuffle=False), nn.CrossEntropyLoss())
    model.eval()
    with torch.no_grad():
        out = model(X)
    model.train()
    assert scores["loss"] == pytest.approx(nn.functional.cross_entropy(out, y).item(), rel=1e-5)
    assert scores["accuracy"] == pytest.approx(accuracy(out, y).item(), abs=1e-6)  # float32 batch means
    assert model.training


def test_evaluate_regression_has_no_accuracy_and_custom_metrics_work():
    """With float targets no accuracy is invented; user metrics are sample-weighted means."""
    X = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    y = X.sum(1, keepdim=True)
    model = nn.Linear(4, 1)
    loader = [(X[:20], y[:20]), (X[20:], y[20:])]
    scores = evaluate(model, loader, nn.MSELoss(), metrics={"mae": lambda o, t: (o - t).abs().mean()})
    with torch.no_grad():
        out = model(X)
    assert set(scores) == {"loss", "mae"}
    assert scores["mae"] == pytest.approx((out - y).abs().mean().item(), rel=1e-5)


def test_checkpoint_resume_is_bit_identical(tmp_path):
    """2 epochs straight == 1 epoch, save, fresh objects, load, 1 more epoch: same weights bit for bit."""
    X, y = blobs()

    def run(epochs, path=None):
        model = mlp(seed=0)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
        loader = tensor_loader(X, y, batch_size=16, seed=7)
        h = fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=epochs, scheduler=sched,
                progress=False, checkpoint_path=path)
        return model, h, opt

    torch.manual_seed(123)
    straight, h_straight, _ = run(2)
    path = tmp_path / "ckpt.pt"
    torch.manual_seed(123)
    run(1, path)
    torch.manual_seed(999)  # global RNG disturbed: resuming must restore it
    resumed, h_resumed, opt = run(2, path)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert h_resumed.step_loss == h_straight.step_loss
    assert len(h_resumed.epochs) == 2
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** 3)


def test_fit_with_finished_checkpoint_trains_no_more(tmp_path):
    """Resuming from a checkpoint that already holds all epochs returns its history without a step."""
    X, y = blobs()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "done.pt"
    fit(model, nn.CrossEntropyLoss(), opt, tensor_loader(X, y), epochs=1, progress=False, checkpoint_path=path)
    before = [p.clone() for p in model.parameters()]
    h = fit(model, nn.CrossEntropyLoss(), opt, tensor_loader(X, y), epochs=1, progress=False, checkpoint_path=path)
    assert len(h.epochs) == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_save_and_load_checkpoint_functions(tmp_path):
    """save_checkpoint/load_checkpoint round-trip model, optimizer state and the loader's generator."""
    X, y = blobs()
    model, loader = mlp(), tensor_loader(X, y, seed=5)
    opt = torch.optim.Adam(model.parameters())
    fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=1, progress=False)
    path = save_checkpoint(tmp_path / "sub" / "c.pt", model, opt, history=History(step_loss=[1.0]), loader=loader)
    order = [yb.tolist() for _, yb in loader]
    other, loader2 = mlp(seed=1), tensor_loader(X, y, seed=0)
    opt2 = torch.optim.Adam(other.parameters())
    h = load_checkpoint(path, other, opt2, loader=loader2)
    assert h.step_loss == [1.0]
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert [yb.tolist() for _, yb in loader2] == order
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt", other)


def test_clip_grad_norm_and_step_scheduler_match_hand_loop():
    """Gradient clipping and a per-step scheduler do what the hand-written loop does."""
    X, y = blobs()
    results = []
    for use_fit in (False, True):
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s))
        loader = tensor_loader(X, y, batch_size=32, seed=1)
        torch.manual_seed(0)
        if use_fit:
            fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=2, clip_grad_norm=0.5, scheduler=sched, progress=False)
        else:
            hand_loop(model, loader, opt, epochs=2, clip=0.5, scheduler=sched)
        results.append([p.detach().clone() for p in model.parameters()] + [opt.param_groups[0]["lr"]])
    for a, b in zip(*results):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    assert results[1][-1] == pytest.approx(0.5 / 7)  # 6 steps of lr = 0.5 / (1 + step)


def test_epoch_scheduler_and_plateau():
    """scheduler_interval='epoch' steps once per epoch; ReduceLROnPlateau receives the validation loss."""
    X, y = blobs()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    h = fit(model, nn.CrossEntropyLoss(), opt, tensor_loader(X, y), epochs=2, scheduler=sched,
            scheduler_interval="epoch", progress=False)
    assert [e["lr"] for e in h.epochs] == pytest.approx([0.1, 0.01])
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)  # the model never changes: no improvement
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    h = fit(model, nn.CrossEntropyLoss(), opt, tensor_loader(X, y), tensor_loader(X, y, shuffle=False),
            epochs=3, scheduler=plateau, progress=False)
    assert [e["lr"] for e in h.epochs] == [1.0, 0.5, 0.25]


def test_amp_is_a_no_op_on_cpu_and_device_argument_moves_model():
    """amp=True on CPU gives exactly the float32 result; device='cpu' is accepted."""
    X, y = blobs()
    weights = []
    for amp in (False, True):
        model = mlp()
        torch.manual_seed(0)
        fit(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), tensor_loader(X, y),
            epochs=1, amp=amp, device="cpu", progress=False)
        weights.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(*weights)


def test_compile_option_gives_the_same_result():
    """compile={'backend': 'eager'} runs through torch.compile and gives the same weights."""
    X, y = blobs()
    weights = []
    for compile_opt in (False, {"backend": "eager"}):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
        fit(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1),
            [(X[:48], y[:48]), (X[48:], y[48:])], epochs=1, compile=compile_opt, progress=False)
        weights.append(torch.cat([p.flatten() for p in model.parameters()]))
    torch.testing.assert_close(weights[0], weights[1], atol=1e-6, rtol=0)


def test_list_of_batches_and_tuple_inputs():
    """A plain list of (x, y) pairs is a valid loader."""
    X, y = blobs()
    model = mlp()
    h = fit(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1),
            [(X[:50], y[:50]), (X[50:], y[50:])], epochs=2, progress=False)
    assert len(h.step_loss) == 4 and h.steps_per_epoch == [2, 2]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"epochs": 0}, ValueError, "epochs must be an int >= 1"),
    ({"epochs": 1.5}, ValueError, "epochs must be an int"),
    ({"loss_fn": "mse"}, TypeError, "loss_fn must be callable"),
    ({"model": lambda x: x}, TypeError, "model must be a torch.nn.Module"),
    ({"optimizer": "sgd"}, TypeError, "optimizer must be a torch.optim.Optimizer"),
    ({"train_loader": []}, ValueError, "train_loader is empty"),
    ({"train_loader": None}, TypeError, "train_loader must be an iterable"),
    ({"train_loader": iter([(torch.zeros(1, 5), torch.zeros(1, dtype=torch.long))])}, TypeError, "used up"),
    ({"val_loader": []}, ValueError, "val_loader is empty"),
    ({"clip_grad_norm": -1.0}, ValueError, "clip_grad_norm must be a positive"),
    ({"scheduler": 3}, TypeError, "scheduler must have a step"),
    ({"scheduler_interval": "batch"}, ValueError, "scheduler_interval"),
    ({"metrics": ["acc"]}, TypeError, "metrics must be a dict"),
    ({"compile": "yes"}, TypeError, "compile must be a bool"),
    ({"train_loader": [(torch.zeros(2, 5),)]}, ValueError, r"pair \(x, y\)"),
])
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    """Each invalid argument fails early with a message saying what was expected."""
    X, y = blobs()
    model = mlp()
    args = {"model": model, "loss_fn": nn.CrossEntropyLoss(), "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
            "train_loader": [(X, y)], "epochs": 1}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        fit(progress=False, **args)


def test_loader_that_yields_nothing_and_diverging_loss_raise():
    """A loader without batches (no __len__) and a loss that becomes NaN are reported clearly."""
    class Empty:
        def __iter__(self):
            return iter(())
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="yielded no batches"):
        fit(model, nn.CrossEntropyLoss(), opt, Empty(), progress=False)
    X, y = blobs()
    bad = [(X * float("nan"), y)]
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        fit(model, nn.CrossEntropyLoss(), opt, bad, progress=False)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate(model, Empty(), nn.CrossEntropyLoss())


def test_plot_history_draws_losses_and_metrics():
    """plot_history returns two axes with the step loss and the validation accuracy; bad input is refused."""
    X, y = blobs()
    model = mlp()
    h = fit(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), tensor_loader(X, y),
            [(X, y)], epochs=2, progress=False)
    axes = plot_history(h, smooth=2)
    assert len(axes) == 2
    assert len(axes[0].lines) == 3 and len(axes[1].lines) == 1
    h_plain = fit(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), [(X, y)],
                  epochs=1, progress=False)
    assert len(plot_history(h_plain)) == 1
    with pytest.raises(ValueError, match="empty"):
        plot_history(History())
    with pytest.raises(TypeError):
        plot_history({"step_loss": [1.0]})


def test_tensor_batches_cover_every_sample_once_per_epoch_and_reshuffle():
    """TensorBatches: ceil(N/b) batches (floor with drop_last), each epoch a permutation, a new order each epoch."""
    X, y = torch.arange(10.0)[:, None], torch.arange(10)
    batches = TensorBatches(X, y, batch_size=4, seed=0)
    assert len(batches) == 3 and len(TensorBatches(X, y, batch_size=4, drop_last=True)) == 2
    epoch1 = [yb for _, yb in batches]
    epoch2 = [yb for _, yb in batches]
    assert [len(b) for b in epoch1] == [4, 4, 2]
    assert sorted(torch.cat(epoch1).tolist()) == list(range(10)) == sorted(torch.cat(epoch2).tolist())
    assert not torch.equal(torch.cat(epoch1), torch.cat(epoch2))
    assert all(torch.equal(xb[:, 0].long(), yb) for xb, yb in batches)
    assert torch.cat([yb for _, yb in TensorBatches(X, y, 3, shuffle=False)]).tolist() == list(range(10))
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        TensorBatches(X, y, batch_size=0)
    with pytest.raises(ValueError, match="same length"):
        TensorBatches(X, y[:5])


def test_checkpoint_resume_with_tensor_batches(tmp_path):
    """TensorBatches' generator is saved by checkpoints: resuming reproduces the uninterrupted run."""
    X, y = blobs()

    def run(epochs, path=None):
        model = mlp(seed=0)
        h = fit(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1),
                TensorBatches(X, y, 16, seed=4), epochs=epochs, progress=False, checkpoint_path=path)
        return h

    torch.manual_seed(0)
    straight = run(3)
    torch.manual_seed(0)
    run(2, tmp_path / "c.pt")
    assert run(3, tmp_path / "c.pt").step_loss == straight.step_loss
