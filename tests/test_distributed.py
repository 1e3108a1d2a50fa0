"""Tests of dlbook.distributed: 2 real torchrun processes (gloo, CPU) end with the weights of
single-process SGD on batch 2*b; the batch plan and the argument checks are right."""

from __future__ import annotations

import socket

import pytest
import torch

from dlbook.distributed import Config, free_port, global_batches, launch, train_single


def max_weight_gap(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_two_process_ddp_equals_single_process_with_batch_kb():
    """DDP with k=2 workers of batch b, launched by torchrun on gloo, ends where batch-2b SGD ends.

    Float64 makes the comparison sharp (1e-10). The same run with batch b alone
    ends far away, so the match is not an accident of a tiny learning rate.
    """
    settings = dict(batch_size=8, steps=40, lr=0.1, momentum=0.5, dtype="float64")
    ddp = launch(nproc=2, timeout=240, **settings)
    assert ddp["backend"] == "gloo" and ddp["config"]["world_size"] == 2
    reference = train_single(Config(world_size=2, **settings))
    assert max_weight_gap(ddp["state_dict"], reference["state_dict"]) < 1e-10
    assert ddp["losses"] == pytest.approx(reference["losses"], abs=1e-10)
    alone = train_single(Config(world_size=1, **settings))
    assert max_weight_gap(ddp["state_dict"], alone["state_dict"]) > 1e-3
    assert "--nproc_per_node=2" in ddp["command"]


def test_global_batches_partition_each_epoch():
    """Each step's global batch has k*b distinct indices; within an epoch no sample repeats; epochs reshuffle."""
    config = Config(world_size=2, batch_size=5, steps=12, n_samples=50)
    batches = list(global_batches(config))
    assert len(batches) == 12 and all(len(b) == 10 for b in batches)
    first, second = torch.cat(batches[:5]), torch.cat(batches[5:10])
    assert sorted(first.tolist()) == list(range(50)) == sorted(second.tolist())
    assert not torch.equal(first, second)
    shards = [batches[0][r * 5:(r + 1) * 5] for r in range(2)]
    assert torch.equal(torch.cat(shards), batches[0])
    again = list(global_batches(config))
    assert all(torch.equal(a, b) for a, b in zip(batches, again)), "every process must draw the same batches"


def test_single_process_reference_learns():
    """The reference run lowers the loss, so the weights being compared are trained weights."""
    result = train_single(Config(world_size=2, steps=60, lr=0.1))
    assert result["losses"][-1] < 0.7 * result["losses"][0]


def test_free_port_is_bindable_on_localhost():
    """free_port returns a port that 127.0.0.1 can bind."""
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=0), "batch_size must be an int >= 1"),
    (dict(steps=-1), "steps must be an int >= 1"),
    (dict(lr=-0.1), "lr must be > 0"),
    (dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
    (dict(dtype="float16"), "dtype must be"),
    (dict(world_size=4, batch_size=200, n_samples=512), "needs n_samples >="),
])
def test_config_rejects_bad_values(kwargs, match):
    """Bad training settings fail with a message naming the expected range."""
    with pytest.raises(ValueError, match=match):
        Config(**kwargs)


def test_launch_checks_arguments_before_starting_processes():
    """nproc < 1, a bad timeout or a bad setting raise at once, without starting torchrun."""
    with pytest.raises(ValueError, match="nproc must be an int >= 1"):
        launch(nproc=0)
    with pytest.raises(ValueError, match="timeout"):
        launch(nproc=2, timeout=0)
    with pytest.raises(ValueError, match="batch_size"):
        launch(nproc=2, batch_size=0)
    with pytest.raises(TypeError, match="pass nproc=k"):
        launch(nproc=2, world_size=3)
