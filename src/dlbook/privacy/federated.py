"""Federated averaging with secure aggregation in real processes (``torch.distributed``, gloo).

``run_federated`` starts one server and k client processes with ``torchrun``; each runs
``_federated_main`` (through ``python -m dlbook.privacy``, see ``__main__.py``). Each round the
clients train locally, encode and mask their updates (``dlbook.privacy.secure_aggregation``) and
the server adds them modulo 2^bits. ``federated_processes`` finds any process such a run left
behind.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from dlbook.privacy._checks import _check_int
from dlbook.privacy.secure_aggregation import decode_fixed_point, encode_fixed_point, mask_update, secure_sum

__all__ = [
    "run_federated", "federated_processes",
]


def _fed_data(n_clients: int, seed: int):
    from dlbook.data import load_digits
    d = load_digits()
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(d.X_train), generator=g)
    shards = order.chunk(n_clients)
    return d, [(d.X_train[s], d.y_train[s]) for s in shards]


def _fed_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _set_flat(model: nn.Module, v: torch.Tensor) -> None:
    i = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(v[i:i + p.numel()].view_as(p))
            i += p.numel()


def _federated_main(argv=None) -> None:
    """The script each process runs: rank 0 is the server, ranks 1..k the clients."""
    import torch.distributed as dist

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--local-steps", type=int, default=5)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--bits", type=int, default=32)
    ap.add_argument("--scale", type=float, default=2.0 ** 16)
    ap.add_argument("--secure", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fail-round", type=int, default=-1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dist.init_process_group("gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        k = world - 1
        model = _fed_model(args.seed)
        d, shards = _fed_data(k, args.seed)
        n = _flat(model).numel()
        seen, plain_sums, secure_sums, seconds, accs = [], [], [], [], []
        for r in range(args.rounds):
            if r == args.fail_round and rank == 1:
                raise RuntimeError(f"client 1 fails in round {r} (as asked)")
            t0 = time.perf_counter()
            if rank == 0:
                update = torch.zeros(n, dtype=torch.int64)
            else:
                x, y = shards[rank - 1]
                local = _fed_model(args.seed)
                _set_flat(local, _flat(model))
                opt = torch.optim.SGD(local.parameters(), lr=args.lr)
                for _ in range(args.local_steps):
                    opt.zero_grad()
                    F.cross_entropy(local(x), y).backward()
                    opt.step()
                q_update = encode_fixed_point(_flat(local) - _flat(model), args.scale, args.bits)
                update = mask_update(q_update, rank - 1, k, args.bits, args.seed + r) if args.secure else q_update
            gathered = [torch.zeros(n, dtype=torch.int64) for _ in range(world)] if rank == 0 else None
            dist.gather(update, gathered, dst=0)
            if rank == 0:
                total = secure_sum(gathered[1:], args.bits)
                step = decode_fixed_point(total, args.scale, args.bits) / k
                seen.append(gathered[1].clone())
                secure_sums.append(total)
            else:
                step = torch.zeros(n, dtype=torch.float64)
            dist.broadcast(step, src=0)
            _set_flat(model, _flat(model) + step.float())
            seconds.append(time.perf_counter() - t0)
            if rank == 0:
                with torch.no_grad():
                    accs.append(float((model(d.X_test).argmax(1) == d.y_test).float().mean()))
        # Verification only (outside the protocol): gather the unmasked quantized updates of the last round.
        if rank == 0:
            plain = [torch.zeros(n, dtype=torch.int64) for _ in range(world)]
        last = q_update if rank != 0 else torch.zeros(n, dtype=torch.int64)
        dist.gather(last, plain if rank == 0 else None, dst=0)
        if rank == 0 and args.out:
            plain_sums = torch.remainder(torch.stack(plain[1:]).sum(0), 2 ** args.bits)
            result = {"seen_client0": seen[-1], "client0_plain": plain[1], "secure_sum": secure_sums[-1],
                      "plain_sum": plain_sums, "seconds": seconds, "test_accuracy": accs,
                      "weights": _flat(model), "n_clients": k, "secure": bool(args.secure)}
            tmp = Path(args.out).with_name(Path(args.out).name + ".tmp")
            torch.save(result, tmp)
            os.replace(tmp, args.out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_federated(n_clients: int = 3, rounds: int = 5, local_steps: int = 5, lr: float = 0.1, secure: bool = True,
                  bits: int = 32, scale: float = 2.0 ** 16, seed: int = 0, timeout: float = 120.0,
                  fail_round: int = -1) -> dict:
    """Federated averaging on digits with k client processes and a server process (gloo).

    Each round every client copies the global model, takes ``local_steps`` SGD steps on its own
    shard, encodes its update in fixed point (``encode_fixed_point``), masks it (``mask_update``,
    fresh masks each round) and sends it to the server with ``torch.distributed.gather``; the
    server adds the masked updates modulo 2^bits (``secure_sum``), decodes the mean update and
    broadcasts it. With ``secure=False`` the clients send their quantized updates unmasked (plain
    aggregation).

    All k + 1 processes run in their own process group and are killed when the call returns,
    raises or times out, so a failing run never leaves processes behind.

    Returns:
        ``{"seen_client0", "client0_plain", "secure_sum", "plain_sum", "seconds", "test_accuracy",
        "weights", "n_clients", "secure", "command"}`` (the tensors from the last round).

    Raises:
        RuntimeError: if a process fails or the run exceeds ``timeout``, with the output's tail.
    """
    from dlbook.distributed import free_port

    n_clients = _check_int("n_clients", n_clients, 2)
    rounds = _check_int("rounds", rounds, 1)
    with tempfile.TemporaryDirectory(prefix="dlbook-fed-") as tmp:
        out = Path(tmp) / "result.pt"
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n_clients + 1}", "--nnodes=1",
                   "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "dlbook.privacy",
                   "--rounds", str(rounds), "--local-steps", str(local_steps), "--lr", str(lr), "--bits", str(bits),
                   "--scale", str(scale), "--secure", str(int(secure)), "--seed", str(seed),
                   "--fail-round", str(fail_round), "--out", str(out)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            log, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the federated run did not finish within {timeout} s and was killed") from None
        finally:       # whatever happened (timeout, an interrupt): no process of the group survives the call
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"the federated run failed with exit code {proc.returncode}:\n{log[-3000:]}")
        result = torch.load(out, weights_only=True)
    result["command"] = "torchrun " + " ".join(command[3:])
    return result


def federated_processes() -> list[int]:
    """Process ids of every live process running ``run_federated``'s script (torchrun or a worker).

    Used to check that nothing is left behind after a run, even one that failed. Reads the
    process table with ``psutil`` when it is installed (it comes with Jupyter), else ``/proc``.
    """
    marker = "dlbook.privacy"
    me = os.getpid()
    try:
        import psutil
    except ImportError:
        found = []
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd and "--fail-round" in cmd and int(entry.name) != me:
                found.append(int(entry.name))
        return sorted(found)
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if marker in cmd and "--fail-round" in cmd and proc.info["pid"] != me:
            found.append(proc.info["pid"])
    return sorted(found)
