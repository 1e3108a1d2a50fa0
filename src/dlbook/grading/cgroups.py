"""Limits for a submission's whole process tree: one Linux control group per submission.

``RLIMIT_AS`` and ``RLIMIT_NPROC`` are per process (or per user): a submission that forks, or fills a ``memfd``
whose pages are never mapped, passes them. A control group counts every process the submission starts and every
page it is charged for (anonymous memory, memfd and tmpfs pages, page cache), so:

* memory: ``memory.max`` (v2) or ``memory.limit_in_bytes`` (v1) is ``--memory-mb`` for the tree; past it the
  kernel's OOM killer ends a process of that group, never one of the grader's;
* processes: ``pids.max`` caps the tree (a fork bomb stops there, whatever the user);
* CPU: every submission's group has the same weight, so with ``--jobs N`` a submission that forks a hundred
  spinners shares the CPU with its neighbours as one process would; the group's CPU time is reported;
* at the end every process of the group is killed, the ones that left its process group or session included.

Where: a cgroup v2 subtree delegated to this process (its own group in ``/proc/self/cgroup`` is writable and
takes the controllers), else the cgroup v1 memory, pids and cpu hierarchies (writable as root), else none, and
:attr:`Groups.how` says which, or why none.
"""

from __future__ import annotations

import os
import signal
import time

__all__ = ["Groups"]

_V1 = ("memory", "pids", "cpu", "cpuacct")


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount point, root within the hierarchy, fs type, super options) of every cgroup mount."""
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, tail = left.split(), right.split()
                if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
                    found.append((fields[4].replace("\\040", " "), fields[3], tail[0], set(tail[2].split(","))))
    except OSError:
        pass
    return found


def _own_paths() -> dict[str, str]:
    """{controller: this process's group path} from /proc/self/cgroup ('' for the v2 line)."""
    paths = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                number, controllers, path = line.rstrip("\n").split(":", 2)
                for name in (controllers.split(",") if controllers else [""]):
                    paths[name] = path
    except (OSError, ValueError):
        pass
    return paths


def _folder(mount: str, root: str, path: str) -> str:
    rel = path[len(root):] if root != "/" and path.startswith(root) else path
    return os.path.join(mount, rel.lstrip("/"))


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


class Groups:
    """The control groups of one grading run: ``<own group>/dlbook-<pid>/<name>`` in each hierarchy used."""

    def __init__(self, tag: str | None = None, jobs: int = 1):
        self.tag = tag or f"dlbook-{os.getpid()}"
        self.jobs = max(1, int(jobs))
        self.version: int | None = None
        self.bases: dict[str, str] = {}  # controller (or "" for v2) -> this run's folder
        self.how = "no cgroup"
        try:
            if self._try_v2() or self._try_v1():
                return
        except OSError as err:
            self.how = f"no cgroup ({err.strerror or err})"
            self.close()
            return
        self.how = "no cgroup (no writable cgroup v2 subtree with memory and pids, nor cgroup v1 as root)"

    # set-up ------------------------------------------------------------------------------------------------------

    def _try_v2(self) -> bool:
        own = _own_paths().get("")
        mount = next((m for m in _mounts() if m[2] == "cgroup2"), None)
        if own is None or mount is None:
            return False
        base = _folder(mount[0], mount[1], own)
        if not os.access(base, os.W_OK) or not {"memory", "pids"} <= set(_read(base + "/cgroup.controllers").split()):
            return False
        run = os.path.join(base, self.tag)
        try:
            os.mkdir(run)
        except OSError:
            return False
        try:  # a group with processes cannot pass controllers down (v2's no-internal-process rule): then no v2
            wanted = ["+memory", "+pids"] + (["+cpu"] if "cpu" in _read(base + "/cgroup.controllers").split() else [])
            _write(base + "/cgroup.subtree_control", " ".join(wanted))
            _write(run + "/cgroup.subtree_control", " ".join(wanted))
        except OSError:
            try:
                os.rmdir(run)
            except OSError:
                pass
            return False
        self.version, self.bases = 2, {"": run}
        try:  # the run weighs as much as its --jobs processes would (each submission's group weighs the same)
            _write(run + "/cpu.weight", str(min(10000, 100 * self.jobs)))
        except OSError:
            pass
        self.how = "cgroup v2 (memory, pids, cpu)"
        return True

    def _try_v1(self) -> bool:
        if os.geteuid() != 0:
            return False
        own = _own_paths()
        made: dict[str, str] = {}
        for controller in _V1:
            mount = next((m for m in _mounts() if m[2] == "cgroup" and controller in m[3]), None)
            if mount is None or controller not in own:
                continue
            run = os.path.join(_folder(mount[0], mount[1], own[controller]), self.tag)
            if run in made.values():  # cpu and cpuacct mounted together
                made[controller] = run
                continue
            try:
                os.mkdir(run)
            except FileExistsError:
                pass
            except OSError:
                continue
            made[controller] = run
        if not {"memory", "pids"} <= set(made):
            self.bases = made
            self.close()
            return False
        self.version, self.bases = 1, made
        if "cpu" in made:  # the run weighs as much as its --jobs processes would (each submission's group weighs the same)
            try:
                _write(made["cpu"] + "/cpu.shares", str(1024 * self.jobs))
            except OSError:
                pass
        self.how = "cgroup v1 (" + ", ".join(c for c in ("memory", "pids", "cpu") if c in made) + ")"
        return True

    @property
    def available(self) -> bool:
        return self.version is not None

    # one submission ----------------------------------------------------------------------------------------------

    def _folders(self, name: str) -> list[str]:
        return sorted({os.path.join(base, name) for base in self.bases.values()})

    def make(self, name: str, memory_bytes: int | None, max_processes: int) -> list[str]:
        """Create the group ``name`` with its limits; return the ``cgroup.procs`` files a process writes its pid
        into to join it (the submission does so itself, before it runs anything)."""
        if not self.available:
            return []
        folders = self._folders(name)
        for folder in folders:
            os.makedirs(folder, exist_ok=True)
        if self.version == 2:
            folder = folders[0]
            if memory_bytes:
                _write(folder + "/memory.max", str(memory_bytes))
                try:
                    _write(folder + "/memory.swap.max", "0")
                except OSError:
                    pass
            _write(folder + "/pids.max", str(max_processes))
            return [folder + "/cgroup.procs"]
        memory, pids = os.path.join(self.bases["memory"], name), os.path.join(self.bases["pids"], name)
        if memory_bytes:
            _write(memory + "/memory.limit_in_bytes", str(memory_bytes))
            try:  # memory + swap, where swap accounting is on
                _write(memory + "/memory.memsw.limit_in_bytes", str(memory_bytes))
            except OSError:
                pass
        _write(pids + "/pids.max", str(max_processes))
        return [folder + "/cgroup.procs" for folder in folders]

    def cpu_seconds(self, name: str) -> float | None:
        """CPU time (user + system) of every process the group ever held."""
        try:
            if self.version == 2:
                for line in _read(os.path.join(self.bases[""], name, "cpu.stat")).splitlines():
                    if line.startswith("usage_usec "):
                        return int(line.split()[1]) / 1e6
            elif "cpuacct" in self.bases:
                return int(_read(os.path.join(self.bases["cpuacct"], name, "cpuacct.usage"))) / 1e9
        except (OSError, ValueError):
            pass
        return None

    def oom_kills(self, name: str) -> int:
        """How many processes of the group the kernel's OOM killer ended (its memory limit was reached)."""
        try:
            if self.version == 2:
                text = _read(os.path.join(self.bases[""], name, "memory.events"))
            elif "memory" in self.bases:
                text = _read(os.path.join(self.bases["memory"], name, "memory.oom_control"))
            else:
                return 0
        except OSError:
            return 0
        for line in text.splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def pids(self, name: str) -> set[int]:
        found: set[int] = set()
        for folder in self._folders(name):
            try:
                found |= {int(p) for p in _read(folder + "/cgroup.procs").split()}
            except (OSError, ValueError):
                pass
        return found

    def kill(self, name: str, patience_s: float = 5.0) -> None:
        """SIGKILL every process of the group until it is empty (or ``patience_s`` passed)."""
        if not self.available:
            return
        if self.version == 2:
            try:
                _write(os.path.join(self.bases[""], name, "cgroup.kill"), "1")
            except OSError:
                pass
        deadline = time.monotonic() + patience_s
        while True:
            left = self.pids(name)
            if not left or time.monotonic() > deadline:
                return
            for pid in left:  # a fork racing this loop is caught in the next round; pids.max bounds the rounds
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.01)

    def remove(self, name: str) -> None:
        """Kill what is left and remove the group (a group with a process in it cannot be removed)."""
        self.kill(name)
        for folder in self._folders(name):
            for _ in range(50):
                try:
                    os.rmdir(folder)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)

    def close(self) -> None:
        """Remove this run's folders (each submission's group must have been removed)."""
        for base in sorted(set(self.bases.values())):
            try:
                for entry in os.scandir(base):
                    if entry.is_dir():
                        self.remove(entry.name)
                os.rmdir(base)
            except OSError:
                pass
        self.bases = {}
        self.version = None
