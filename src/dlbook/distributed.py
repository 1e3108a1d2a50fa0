"""Data-parallel SGD for real: a DistributedDataParallel training script and its launcher.

Averaging the gradients of k workers, each on its own b samples, gives the
gradient of the mean loss over all k*b samples (the mean of k equal-sized
means is the mean of the union), so one data-parallel step is exactly one
step of SGD with batch k*b. This module shows it with real processes:

* ``main()`` is the training script. Each of the k processes started by
  ``torchrun`` builds the same model and the same data, draws the same global
  batch of k*b samples each step, trains on its own slice of b samples inside
  ``DistributedDataParallel`` (which averages the gradients with an
  all-reduce during ``backward``), and rank 0 writes the result to a file.
* ``train_single(config)`` trains one process with batch k*b on the same
  global batches: the reference the distributed weights must equal.
* ``launch(nproc=2, ...)`` runs ``torchrun --nproc_per_node=nproc`` on the
  script from Python (a notebook) on a free localhost port, and returns what
  rank 0 wrote.

The backend is chosen automatically: ``gloo`` on CPU, ``nccl`` when every
process has its own CUDA GPU. The same script runs unchanged on several GPUs
or several machines; only the launch command changes, for example on each of
2 nodes with 8 GPUs::

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d \\
             --rdzv-endpoint=HOST_OF_NODE_0:29500 -m dlbook.distributed --steps 100
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["Config", "make_model", "make_data", "global_batches", "train_single", "main", "launch", "free_port"]


@dataclass(frozen=True)
class Config:
    """What both the distributed and the single-process run train.

    Attributes:
        world_size: number of workers k (the single-process reference uses it
            only to form global batches of world_size * batch_size samples).
        batch_size: samples per worker per step, b.
        steps: optimizer steps.
        lr: learning rate of SGD.
        momentum: momentum of SGD.
        n_samples: number of examples of the synthetic regression data.
        n_features: number of input features of that data.
        seed: seeds the data, the initial weights and the batch order.
        dtype: ``"float32"`` or ``"float64"``.
    """

    world_size: int = 2
    batch_size: int = 16
    steps: int = 50
    lr: float = 0.05
    momentum: float = 0.0
    n_samples: int = 512
    n_features: int = 8
    seed: int = 0
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("world_size", "batch_size", "steps", "n_samples", "n_features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.world_size * self.batch_size > self.n_samples:
            raise ValueError(f"a global batch of world_size * batch_size = {self.world_size * self.batch_size} "
                             f"samples needs n_samples >= that, got {self.n_samples}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        """``dtype`` as a torch dtype (``"float64"`` -> ``torch.float64``)."""
        return getattr(torch, self.dtype)


def make_model(config: Config) -> nn.Module:
    """A small MLP, (B, n_features) -> (B, 1), initialised from ``config.seed`` (the same in every process)."""
    torch.manual_seed(config.seed)
    model = nn.Sequential(nn.Linear(config.n_features, 32), nn.Tanh(), nn.Linear(32, 1))
    return model.to(config.torch_dtype)


def make_data(config: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """A nonlinear regression problem: X of shape (n_samples, n_features), y of shape (n_samples, 1)."""
    g = torch.Generator().manual_seed(config.seed + 1)
    X = torch.randn(config.n_samples, config.n_features, generator=g, dtype=torch.float64)
    y = torch.sin(X @ torch.randn(config.n_features, 1, generator=g, dtype=torch.float64))
    return X.to(config.torch_dtype), y.to(config.torch_dtype)


def global_batches(config: Config):
    """Yield, for each step, the indices (k*b,) of that step's global batch.

    Every process draws the same indices from the same seeded generator, so the
    workers agree on the global batch without talking; worker r then takes the
    slice ``[r*b, (r+1)*b)``. Each epoch is a fresh permutation.
    """
    g = torch.Generator().manual_seed(config.seed + 2)
    size = config.world_size * config.batch_size
    order, pos = torch.randperm(config.n_samples, generator=g), 0
    for _ in range(config.steps):
        if pos + size > config.n_samples:  # drop the incomplete tail, reshuffle
            order, pos = torch.randperm(config.n_samples, generator=g), 0
        yield order[pos:pos + size]
        pos += size


def train_single(config: Config) -> dict:
    """The reference: one process, plain SGD with batch world_size * batch_size on the same global batches.

    Returns:
        ``{"state_dict": ..., "losses": list of per-step losses}``.
    """
    model = make_model(config)
    X, y = make_data(config)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    losses = []
    for idx in global_batches(config):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(X[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {"state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}, "losses": losses}


# ----------------------------------------------------------------------------- the script torchrun runs

def _parse(argv=None) -> tuple[Config, str | None]:
    parser = argparse.ArgumentParser(description="Data-parallel SGD with DistributedDataParallel "
                                                 "(run it with torchrun, or from Python with dlbook.distributed.launch).")
    defaults = Config()
    for name, value in asdict(defaults).items():
        if name != "world_size":
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--out", default=None, help="file where rank 0 saves the final weights and losses")
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    return args, out


def main(argv=None) -> None:
    """Train with DistributedDataParallel; run once per process by ``torchrun``.

    Reads RANK, WORLD_SIZE and LOCAL_RANK (set by torchrun). Each process trains
    on its b samples of every global batch; DDP all-reduces (averages) the
    gradients in ``backward``, so all processes take the same step and keep
    identical weights. Rank 0 saves ``{"state_dict", "losses", "config",
    "backend", "seconds"}`` to ``--out``.
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    args, out = _parse(argv)
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() >= int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend=backend)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        config = Config(world_size=world, **args)
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(device)
        model = make_model(config).to(device)
        ddp = DDP(model, device_ids=[device.index] if use_cuda else None)  # broadcasts rank 0's weights
        X, y = (t.to(device) for t in make_data(config))
        opt = torch.optim.SGD(ddp.parameters(), lr=config.lr, momentum=config.momentum)
        b, losses, start = config.batch_size, [], time.perf_counter()
        for idx in global_batches(config):
            mine = idx[rank * b:(rank + 1) * b].to(device)  # this worker's shard of the global batch
            opt.zero_grad()
            loss = nn.functional.mse_loss(ddp(X[mine]), y[mine])
            loss.backward()                                 # gradients are averaged over the workers here
            opt.step()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)                      # only for reporting the global batch's loss
            losses.append(mean_loss / world)
        if rank == 0 and out is not None:
            result = {"state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                      "losses": torch.stack(losses).cpu().tolist(), "config": asdict(config),
                      "backend": backend, "seconds": time.perf_counter() - start}
            tmp = Path(out).with_name(Path(out).name + ".tmp")
            torch.save(result, tmp)
            os.replace(tmp, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- the launcher

def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it when binding port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int = 2, timeout: float = 300.0, threads_per_process: int = 1, **config) -> dict:
    """Run ``torchrun --nproc_per_node=nproc -m dlbook.distributed`` and return what rank 0 saved.

    Args:
        nproc: number of worker processes k (>= 1).
        timeout: seconds before the whole run is killed.
        threads_per_process: OMP_NUM_THREADS of each worker (k workers share the cores).
        **config: fields of ``Config`` except world_size (batch_size, steps, lr, ...).

    Returns:
        ``{"state_dict", "losses", "config", "backend", "seconds", "command"}``.

    Raises:
        RuntimeError: if torchrun fails, with the tail of its output.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be an int >= 1, got {nproc!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    if "world_size" in config:
        raise TypeError("launch sets world_size from nproc; pass nproc=k instead of world_size")
    Config(world_size=nproc, **config)  # check the arguments here, not in k crashing processes
    with tempfile.TemporaryDirectory(prefix="dlbook-ddp-") as tmp:
        out = Path(tmp) / "result.pt"
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
                   "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "dlbook.distributed",
                   "--out", str(out)]
        for name, value in config.items():
            command += [f"--{name.replace('_', '-')}", str(value)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads_per_process))
        try:
            run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise RuntimeError(f"torchrun did not finish within {timeout} s: {' '.join(command)}") from err
        if run.returncode != 0 or not out.is_file():
            tail = (run.stdout + run.stderr)[-3000:]
            raise RuntimeError(f"torchrun failed with exit code {run.returncode}:\n{' '.join(command)}\n{tail}")
        result = torch.load(out, weights_only=True)
    result["command"] = "torchrun " + " ".join(command[3:])
    return result


if __name__ == "__main__":
    main()
    # Every collective is done and the process group destroyed. Leave without running the interpreter's
    # teardown, where gloo's helper threads can be destroyed while still joinable ("terminate called
    # without an active exception", seen as a SIGABRT of one rank under load).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
