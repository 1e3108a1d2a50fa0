"""The submission's side of grading: a warm process that forks one sandboxed child per submission.

The *zygote* is forked by the grading process (:mod:`dlbook.grading.worker`) after torch is imported and before
any test is: it holds no test code, no hidden test, no expected value and no results file, and neither does any
child it forks. It imports IPython once. For
each submission the grading process sends it one end of a socket; the zygote forks a child that

1. isolates itself (:func:`isolate`): on Linux, new mount, network, PID, IPC and UTS namespaces (as root, or
   with a user namespace otherwise), a new root that holds only the system's and Python's folders, read-only,
   an empty private ``/tmp`` (also the working folder), no network but a down loopback, its own ``/proc``, and
   no view of the grader's folders, the hidden tests, the other submissions or the output folder; then it
   drops to user ``nobody`` (as root) or into a nested user namespace without privileges. Where any of that
   is impossible it keeps going with the resource limits alone and says so;
2. limits its CPU time, address space, processes and core files (``resource.setrlimit``), after joining its own
   control group (:mod:`dlbook.grading.cgroups`: memory, processes and CPU weight for its whole process tree);
3. keeps only an allowlist of the environment, joins a fresh empty session keyring and installs a seccomp filter
   (:mod:`dlbook.grading.seccomp`), in every mode, namespaces or not;
4. answers the grader's requests (:func:`serve`): run a cell, read a name, call a function, read an
   attribute, run a probe. Every answer is data (:mod:`dlbook.grading.wire`); objects stay here behind
   handles.

The child's exit status goes back to the grading process through the control socket. If setting up fails, the
child's first message says what failed (``{"failed": ...}``), which the student's report carries as ``detail``.

Why this file is longer than 600 lines: the steps above run in one forked child in a fixed order, and a
reviewer checks that none is skipped or reordered by reading them top to bottom in one file; the parts that
stand alone (control groups, the seccomp filter, the wire format) already live in their own modules.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import resource
import select
import signal
import socket
import sys
import sysconfig
import traceback

__all__ = ["isolate", "namespaces_available", "serve", "set_limits", "zygote"]

# Linux constants (sched.h, mount.h)
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE, MS_RELATIME = \
    1024, 2048, 4096, 8192, 16384, 1 << 18, 1 << 21
MNT_DETACH = 2
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "arm64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
PR_SET_NO_NEW_PRIVS, PR_SET_DUMPABLE, PR_SET_PDEATHSIG = 38, 4, 1
NOBODY = 65534
MAX_PROCESSES = 512
NO_SANDBOX_EXIT = 71  # the exit code of a submission not run because no sandbox was possible (--isolation require)

_exit = os._exit  # bound before any submitted code runs


# ---------------------------------------------------------------------------------------------- limits


def set_limits(cpu_seconds: float | None, memory_mb: int | None) -> None:
    """CPU seconds (SIGXCPU, then SIGKILL one second later), address space in MiB, no core files.

    A limit the platform refuses (macOS does not enforce RLIMIT_AS) is skipped, not fatal.
    """
    if cpu_seconds:
        soft = max(1, int(cpu_seconds))
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        new_hard = soft + 1 if hard == resource.RLIM_INFINITY else min(hard, soft + 1)
        resource.setrlimit(resource.RLIMIT_CPU, (min(soft, new_hard), new_hard))
    if memory_mb:
        value = int(memory_mb) * 1024 * 1024
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        new_hard = value if hard == resource.RLIM_INFINITY else min(hard, value)
        try:
            resource.setrlimit(resource.RLIMIT_AS, (min(value, new_hard), new_hard))
        except (ValueError, OSError):
            pass
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass


# ---------------------------------------------------------------------------------------------- isolation


class _Libc:
    def __init__(self):
        # The symbols of the running program (libc among them): no ctypes.util.find_library, which forks a
        # process (and the first process forked after unshare(CLONE_NEWPID) becomes the namespace's init).
        self.lib = ctypes.CDLL(None, use_errno=True)

    def call(self, name: str, *args):
        if getattr(self.lib, name)(*args) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{name}: {os.strerror(err)}")

    def mount(self, source, target, fstype, flags, data=None):
        enc = (lambda s: None if s is None else s.encode())
        self.call("mount", enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))

    def pivot_root(self, new_root: str, put_old: str):
        number = _PIVOT_ROOT.get(platform.machine())
        if number is None:
            raise OSError(0, "pivot_root: unknown architecture")
        if self.lib.syscall(ctypes.c_long(number), new_root.encode(), put_old.encode()) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pivot_root: {os.strerror(err)}")

    def prctl(self, option: int, value: int):
        self.call("prctl", option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _visible_paths() -> list[str]:
    """The folders the submission may read: the system's, Python's and the packages' (real paths, deduplicated)."""
    import dlbook

    candidates = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", sys.prefix,
                  sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                  os.path.dirname(os.path.dirname(os.path.abspath(dlbook.__file__))),
                  os.path.dirname(os.path.realpath(sys.executable))]
    candidates += [p for p in sys.path if p and os.path.isabs(p) and _under_prefix(p)]
    candidates += [sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    found = []
    for path in candidates:
        if os.path.islink(path) and os.path.dirname(path) == "/":
            found.append(path)  # /bin -> usr/bin on merged-/usr systems: re-created as a link
            continue
        real = os.path.realpath(path)
        if os.path.isdir(real) and real != "/":
            found.append(real)
    return sorted(set(found))


def _under_prefix(path: str) -> bool:
    import dlbook

    real = os.path.realpath(path)
    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                                           os.path.dirname(os.path.dirname(os.path.abspath(dlbook.__file__))))}
    return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)


def _keep_only_visible_imports() -> None:
    """Drop the working folder and anything outside Python's and dlbook's folders from ``sys.path``, and resolve
    the rest: the sandbox binds real paths only, so a virtualenv reached through a symbolic link
    (``.venv -> /elsewhere/.venv``) must be imported from ``/elsewhere/.venv``."""
    kept = [os.path.realpath(p) for p in sys.path if p and os.path.isabs(p) and _under_prefix(p)]
    sys.path[:] = list(dict.fromkeys(kept))
    sys.path_importer_cache.clear()


def _linked_paths() -> list[str]:
    """The symbolic links on the way to Python's folders (``.venv -> /elsewhere/.venv``): modules imported
    already keep their unresolved ``__path__`` and ``__file__``, so the new root holds the same links."""
    links = []
    for path in {sys.prefix, sys.exec_prefix, sys.base_prefix, *_ORIGINAL_SYS_PATH}:
        if not path or not os.path.isabs(path):
            continue
        parts = os.path.abspath(path).split("/")[1:]
        for i in range(1, len(parts) + 1):
            step = "/" + "/".join(parts[:i])
            if os.path.islink(step) and os.path.dirname(step) != "/":
                links.append(step)
    return sorted(set(links))


_ORIGINAL_SYS_PATH = list(sys.path)


# The environment a submission sees: nothing of the instructor's (tokens, paths, ssh agents), only what Python,
# the locale and the BLAS libraries read.
ENVIRONMENT_ALLOWLIST = ("PATH", "LANG", "LANGUAGE", "TZ", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                         "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                         "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "PYTHONHASHSEED",
                         "MPLBACKEND", "DLBOOK_SANDBOX_DEBUG", "DLBOOK_SANDBOX_USERNS")


def scrubbed_environment(environ=None) -> dict[str, str]:
    """The allowlisted variables of ``environ`` (default ``os.environ``), ``LC_*`` included."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k in ENVIRONMENT_ALLOWLIST or k.startswith("LC_")}


def _bind_readonly(libc: _Libc, source: str, target: str) -> None:
    libc.mount(source, target, None, MS_BIND | MS_REC)
    st = os.statvfs(target).f_flag
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | (st & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME))
    if st & 4096:  # ST_RELATIME
        flags |= MS_RELATIME
    libc.mount(None, target, None, flags)


def _build_root(libc: _Libc, root: str, hide: list[str], tmp_mb: int) -> None:
    """Make ``root`` (an empty folder) the new file system: read-only binds, /dev, /tmp; then move it to /."""
    libc.mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16m")
    # The private /tmp comes first: a checkout or venv that lives under /tmp (a CI clone, say) is then
    # bound on top of it below, instead of being hidden by it.
    os.makedirs(root + "/tmp", exist_ok=True)
    libc.mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={tmp_mb}m")
    bound: list[str] = []
    for path in _visible_paths():
        if any(path == b or path.startswith(b.rstrip("/") + "/") for b in bound):
            continue
        target = root + path
        if os.path.islink(path):
            os.symlink(os.readlink(path), target)
            continue
        os.makedirs(target, exist_ok=True)
        _bind_readonly(libc, path, target)
        bound.append(path)
    for link in _linked_paths():  # recreated where the new root is ours (inside a bound folder it exists already)
        target = root + link
        if not os.path.lexists(target) and os.path.exists(os.path.realpath(link)):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(os.readlink(link), target)
    for path in hide:  # anything of the grader's that a visible folder happens to hold
        target = root + os.path.realpath(path)
        if os.path.isdir(target):
            libc.mount("tmpfs", target, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k")
        elif os.path.exists(target):
            libc.mount("/dev/null", target, None, MS_BIND)
            libc.mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    os.makedirs(root + "/dev", exist_ok=True)
    for name in ("null", "zero", "full", "random", "urandom"):
        _write(f"{root}/dev/{name}", "")
        libc.mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
    os.makedirs(root + "/dev/shm", exist_ok=True)
    libc.mount("tmpfs", root + "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={tmp_mb}m")
    os.makedirs(root + "/proc", exist_ok=True)
    # Mounted from PID 1 of the new PID namespace, before the old root goes (a user namespace may mount a
    # proc only while another one is visible).
    libc.mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    libc.mount(None, root, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir(root)
    try:  # the new root becomes /, and the old one leaves this mount namespace for good
        libc.pivot_root(".", ".")
        libc.call("umount2", b".", ctypes.c_int(MNT_DETACH))
    except OSError:  # no pivot_root here (an initramfs root, an unknown architecture): move and chroot
        libc.mount(root, "/", None, MS_MOVE)
        os.chroot(".")
    os.chdir("/")


def isolate(config: dict) -> tuple[str, dict]:
    """Enter the namespaces; return (isolation description, what the caller must do next).

    On success the caller is still outside the new PID namespace: it must fork; the child, PID 1 there, builds
    the new root (:func:`_build_root`, which needs the new PID namespace for its ``/proc``).
    Raises OSError when the platform refuses; the caller then grades with the limits alone.
    """
    if not sys.platform.startswith("linux"):
        raise OSError("namespaces exist on Linux only")
    libc = _Libc()
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    # DLBOOK_SANDBOX_USERNS=1 takes the unprivileged path (a user namespace) even as root: for testing it.
    as_root = os.geteuid() == 0 and not os.environ.get("DLBOOK_SANDBOX_USERNS")
    libc.call("unshare", flags if as_root else flags | CLONE_NEWUSER)
    if not as_root:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")
    libc.mount(None, "/", None, MS_REC | MS_PRIVATE)
    how = "namespaces (mount, network, pid, ipc, uts" + ("" if as_root else ", user") + \
          "); read-only system folders; private /tmp; no network; user " + ("nobody" if as_root else "unprivileged")
    return how, {"as_root": as_root, "uid": uid, "gid": gid}


def namespaces_available() -> bool:
    """Whether this machine lets a process enter the namespaces :func:`isolate` needs and mount in them (tried in a
    forked child: some systems allow a user namespace but no mount in it, e.g. Ubuntu's AppArmor restriction)."""
    if not sys.platform.startswith("linux"):
        return False
    import tempfile

    folder = tempfile.mkdtemp(prefix="dlbook-ns-")
    pid = os.fork()
    if pid == 0:
        try:
            isolate({})
            _Libc().mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "size=4k")
            _exit(0)
        except BaseException:  # noqa: BLE001
            _exit(1)
    _, status = os.waitpid(pid, 0)
    os.rmdir(folder)
    return os.waitstatus_to_exitcode(status) == 0


def _drop_privileges(libc: _Libc, as_root: bool) -> None:
    if as_root:
        # At most MAX_PROCESSES processes of user nobody at once (a fork bomb stops there; the PID namespace
        # ends whatever is left when the submission ends). The control group's pids.max caps every path.
        resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES))
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    else:
        # A nested user namespace that owns nothing: its root cannot remount what the outer one set up.
        libc.call("unshare", CLONE_NEWUSER)
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", "1000 0 1")
        _write("/proc/self/gid_map", "1000 0 1")
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1)


def _mirror_exit(status: int) -> None:
    """Leave with the same exit code, or die of the same signal, as the process whose ``status`` this is."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):  # SIGKILL and SIGSTOP have no handler to reset
            pass
        os.kill(os.getpid(), sig)
        _exit(128 + sig)
    _exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 70)


# ---------------------------------------------------------------------------------------------- a submission


def _join_cgroup(config: dict) -> str:
    """Move this process (and so all it will start) into the submission's control group; say how it went."""
    files = config.get("cgroup") or []
    if not files:
        return "; " + str(config.get("cgroup_how") or "no cgroup")
    try:
        for path in files:
            _write(path, str(os.getpid()))
    except OSError as err:
        return f"; no cgroup (joining failed: {err.strerror or err})"
    return "; " + str(config.get("cgroup_how"))


def run_submission(sock: socket.socket, config: dict) -> None:
    """In the forked child: isolate (or not), limit, serve; never returns."""
    os.setpgid(0, 0)
    config = dict(config, cgroup_joined=_join_cgroup(config))
    try:
        _Libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # go when the zygote goes (Linux only)
    except (OSError, AttributeError):
        pass
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2) if not os.environ.get("DLBOOK_SANDBOX_DEBUG") else (0, 1):
        os.dup2(devnull, fd)
    os.closerange(3, sock.fileno())
    os.closerange(sock.fileno() + 1, 1 << 16)
    isolation, how = "rlimits only", None
    if config.get("namespaces", True):
        try:
            isolation, how = isolate(config)
        except OSError as err:
            if os.environ.get("DLBOOK_SANDBOX_DEBUG"):
                traceback.print_exc()
            isolation = f"rlimits only (no namespaces: {err.strerror or err})"
    if how is None and config.get("require"):
        try:
            wire_send_refusal(sock, isolation)
        finally:
            _exit(NO_SANDBOX_EXIT)
    if how is None:
        os.makedirs(config["fallback_cwd"], exist_ok=True)
        os.chdir(config["fallback_cwd"])
        _start(sock, config, isolation, None)
    libc = _Libc()
    status_r, status_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid1 = os.fork()
    if pid1 == 0:  # PID 1 of the new namespace: build the root, reap, report the submission's status
        os.close(status_r)
        os.close(ready_r)
        try:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            try:
                _build_root(libc, config["root"], config.get("hide", []), int(config.get("tmp_mb", 512)))
            except OSError as err:
                if os.environ.get("DLBOOK_SANDBOX_DEBUG"):
                    traceback.print_exc()
                os.write(ready_w, f"no root: {err.strerror or err}"[:200].encode())
                _exit(0)
            os.write(ready_w, b"ok")
            os.close(ready_w)
            worker = os.fork()
            if worker == 0:
                os.close(status_w)
                _drop_privileges(libc, how["as_root"])
                _start(sock, config, isolation, how)
            sock.close()
            while True:
                pid, status = os.wait()
                if pid == worker:
                    os.write(status_w, str(status).encode())
                    _exit(0)
        except BaseException:
            if os.environ.get("DLBOOK_SANDBOX_DEBUG"):
                traceback.print_exc()
            _exit(70)
    os.close(status_w)
    os.close(ready_w)
    ready = os.read(ready_r, 256).decode(errors="replace")
    if ready != "ok":  # the namespaces exist but the new root could not be built: the limits alone
        os.waitpid(pid1, 0)
        isolation = f"rlimits only (no sandbox: {ready or 'its first process failed'})"
        if config.get("require"):
            try:
                wire_send_refusal(sock, isolation)
            finally:
                _exit(NO_SANDBOX_EXIT)
        os.makedirs(config["fallback_cwd"], exist_ok=True)
        os.chdir(config["fallback_cwd"])
        _start(sock, config, isolation, None)
    sock.close()
    _, status = os.waitpid(pid1, 0)
    text = os.read(status_r, 64)
    _mirror_exit(int(text) if text.strip().isdigit() else status)


def wire_send_refusal(sock: socket.socket, isolation: str) -> None:
    from dlbook.grading import wire

    wire.send_frame(sock, {"hello": "not run: a sandbox was required; " + isolation})


def _tasks_of(uid: int) -> int:
    """How many tasks (threads) user ``uid`` runs now: without namespaces RLIMIT_NPROC counts all of them (the
    instructor's desktop included), so the submission's cap is added to that count, not set below it."""
    count = 0
    try:
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    if entry.stat().st_uid == uid:
                        count += len(os.listdir(f"/proc/{entry.name}/task"))
                except OSError:
                    continue
    except OSError:
        return 0
    return count


def _confine() -> str:
    """A fresh empty session keyring, then the seccomp filter (:mod:`dlbook.grading.seccomp`); say what held."""
    from dlbook.grading import seccomp

    parts = []
    try:
        seccomp.join_fresh_keyring()
        parts.append("fresh session keyring")
    except OSError as err:
        parts.append(f"no fresh keyring ({err.strerror or err})")
    try:
        parts.append(seccomp.deny_syscalls())
    except OSError as err:
        parts.append(f"no seccomp filter ({err.strerror or err})")
    return "; ".join(parts)


def _start(sock: socket.socket, config: dict, isolation: str, how) -> None:
    code, step = 0, "setting up"
    try:
        step = "making its working folder"
        work = "/tmp/work" if how else os.getcwd()
        os.makedirs(work, exist_ok=True)
        os.chdir(work)
        step = "setting its environment"
        environment = scrubbed_environment()
        os.environ.clear()
        os.environ.update(environment, HOME=work, IPYTHONDIR=os.path.join(work, ".ipython"),
                          MPLCONFIGDIR=os.path.join(work, ".mpl"), TMPDIR="/tmp" if how else work, MPLBACKEND="Agg")
        os.environ.setdefault("PATH", "/usr/bin:/bin")
        step = "setting its limits"
        set_limits(config.get("cpu"), config.get("memory_mb"))
        try:  # a process cap in every path (the control group's pids.max is the one that holds for root)
            cap = MAX_PROCESSES if how else MAX_PROCESSES + _tasks_of(os.getuid())
            resource.setrlimit(resource.RLIMIT_NPROC, (cap, cap))
        except (ValueError, OSError):
            pass
        step = "closing keyrings and system calls"
        isolation += config.get("cgroup_joined", "") + "; " + _confine()
        step = "starting"
        serve(sock, isolation)
    except BaseException as err:  # noqa: BLE001
        if os.environ.get("DLBOOK_SANDBOX_DEBUG"):
            traceback.print_exc()
        code = 70
        if not _started:  # say what failed: the grader puts it into the student's report
            try:
                wire_send_failure(sock, f"the sandbox failed while {step}: {type(err).__name__}: {_describe(err)}")
            except BaseException:  # noqa: BLE001
                pass
    finally:
        _exit(code)


def wire_send_failure(sock: socket.socket, text: str) -> None:
    from dlbook.grading import wire

    wire.send_frame(sock, {"failed": text[:500]})


# ---------------------------------------------------------------------------------------------- requests


class _CallTimeout(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _CallTimeout()


def _describe(err: BaseException) -> str:
    try:
        text = str(err).strip().splitlines()
        return text[0][:2000] if text else ""
    except BaseException:  # noqa: BLE001  (a learner's __str__ may do anything)
        return ""


_started: list = []  # not empty once the grader has been greeted (a failure after that is the submission's)


def serve(sock: socket.socket, isolation: str) -> None:
    """Answer the grader's requests until it says ``exit`` or goes away."""
    import torch

    from dlbook.grading import probes, sets, wire

    sets._GRADER_ACTIVE = True
    shell = _shell()
    namespace = shell.user_ns
    objects: dict[int, object] = {}

    def handle_of(obj) -> wire.Handle:
        objects[len(objects) + 1] = obj
        return wire.Handle(len(objects), type(obj).__name__)

    def resolve(id_: int, type_name: str = ""):
        if id_ not in objects:
            raise wire.WireError("an unknown handle")
        return objects[id_]

    def call(fn, header, blobs):
        sent: list = []
        args = wire.decode(header.get("args", []), blobs, make_handle=resolve, functions=True, tensors=sent)
        kwargs = wire.decode(header.get("kwargs", {"t": "dict", "v": []}), blobs, make_handle=resolve,
                             functions=True, tensors=sent)
        versions = [t._version if isinstance(t, torch.Tensor) else None for t in sent]
        result = fn(*args, **kwargs)
        mutated = []
        for i, (t, v) in enumerate(zip(sent, versions)):
            if isinstance(t, torch.Generator) or t._version != v:
                mutated.append([i, t])
        return result, mutated

    previous_state = None
    signal.signal(signal.SIGALRM, _on_alarm)
    wire.send_frame(sock, {"hello": isolation})
    _started.append(True)
    while True:
        try:
            header, blobs = wire.read_frame(sock)
        except (EOFError, OSError):
            _exit(0)
        op = header.get("op")
        try:
            if op == "run":
                outcome = shell.run_cell(header["source"], store_history=False)
                error = outcome.error_before_exec or outcome.error_in_exec
                wire.send_frame(sock, {"ran": True, "error": None if error is None else
                                       [type(error).__name__[:100], _describe(error)]})
            elif op == "exit":
                _exit(0)
            elif op == "begin":
                previous_state = _seed(int(header.get("seed", 0)))
                wire.send_frame(sock, {"ok": True})
            elif op == "end":
                if previous_state is not None:
                    _restore(previous_state)
                    previous_state = None
                wire.send_frame(sock, {"ok": True})
            elif op == "has":
                wire.send_frame(sock, {"has": header.get("name") in namespace})
            elif op in ("get", "getattr", "call", "probe"):
                seconds = float(header.get("seconds", 10))
                signal.setitimer(signal.ITIMER_REAL, max(0.01, seconds))
                try:
                    mutated: list = []
                    if op == "get":
                        name = header["name"]
                        if name not in namespace:
                            wire.send_frame(sock, {"missing": True})
                            continue
                        value = namespace[name]
                    elif op == "getattr":
                        value = getattr(resolve(header["id"]), str(header["name"]))
                    elif op == "call":
                        value, mutated = call(resolve(header["id"]), header, blobs)
                    else:
                        value, mutated = call(probes.remote_probe(str(header["name"])), header, blobs)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                blobs_out: list = []
                try:
                    with torch._C.DisableTorchFunctionSubclass():
                        back = [[i, wire.encode(t, blobs_out)] for i, t in mutated]
                        encoded = wire.encode(value, blobs_out, handles=handle_of)
                except BaseException as err:  # noqa: BLE001
                    wire.send_frame(sock, {"unsendable": f"{type(err).__name__}: {_describe(err)}"})
                    continue
                wire.send_frame(sock, {"value": encoded, "mutated": back}, blobs_out)
            else:
                wire.send_frame(sock, {"unsendable": f"unknown request {str(op)[:40]!r}"})
        except _CallTimeout:
            wire.send_frame(sock, {"timeout": True})
        except (EOFError, BrokenPipeError, ConnectionResetError):
            _exit(0)
        except BaseException as err:  # noqa: BLE001  (the learner's code may raise anything)
            signal.setitimer(signal.ITIMER_REAL, 0)
            wire.send_frame(sock, {"raised": type(err).__name__[:100], "message": _describe(err)})


def _seed(seed: int):
    import random

    import numpy as np
    import torch

    state = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return state


def _restore(state) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.random.set_rng_state(state[2])


def _shell():
    """A quiet IPython shell with no history database (so nothing is written to the profile)."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False
    return InteractiveShell.instance(config=config)


# ---------------------------------------------------------------------------------------------- the zygote


def zygote(control: socket.socket, base_config: dict | None = None) -> None:
    """Fork a sandboxed child for each ``start`` message; report each child's exit; stop when the grader goes."""
    children: dict[int, int] = {}
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    while True:
        ready, _, _ = select.select([control], [], [], 0.02)
        if ready:
            try:
                data, fds, _, _ = socket.recv_fds(control, 1 << 20, 1)
            except OSError:
                data, fds = b"", []
            if not data:
                return
            message = json.loads(data)
            sock = socket.socket(fileno=fds[0])
            pid = os.fork()
            if pid == 0:
                try:
                    control.close()
                    run_submission(sock, dict(base_config or {}, **message["config"]))
                except BaseException as err:  # noqa: BLE001  (say what failed, then leave)
                    try:
                        wire_send_failure(sock, f"the sandbox failed: {type(err).__name__}: {_describe(err)}")
                    except BaseException:  # noqa: BLE001
                        pass
                finally:
                    _exit(70)
            try:
                os.setpgid(pid, pid)  # also here, so a kill can never miss the group (the child does it too)
            except OSError:
                pass
            sock.close()
            children[pid] = message["index"]
            control.send(json.dumps({"started": message["index"], "pid": pid}).encode())
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not pid:
                break
            index = children.pop(pid, None)
            if index is not None:
                control.send(json.dumps({"exited": index, "code": os.waitstatus_to_exitcode(status)}).encode())


def main(control: socket.socket, base_config: dict) -> None:
    """The zygote's life: import what a submission may need, then fork on request (see :func:`zygote`)."""
    import IPython.core.interactiveshell  # noqa: F401
    import numpy  # noqa: F401
    import torch  # noqa: F401

    import dlbook.grading  # noqa: F401
    from dlbook.grading import probes, seccomp, wire  # noqa: F401

    _keep_only_visible_imports()
    try:
        _Libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # go when the grading process goes
    except (OSError, AttributeError):
        pass
    control.send(b'{"ready": true}')
    zygote(control, base_config)
