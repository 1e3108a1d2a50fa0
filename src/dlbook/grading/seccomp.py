"""What the kernel still shares after the namespaces: keyrings and a few system calls, closed for a submission.

Namespaces do not cover the kernel's key retention service: a process keeps the session keyring it inherited
(the grader's, on a desktop or an ssh login), and the user keyring of its uid outlives every run (user
``nobody``'s keys, written by one submission, can be read by a submission of a later run). Each submission's
sandbox therefore

1. joins a new, empty, anonymous session keyring (:func:`join_fresh_keyring`);
2. installs a seccomp filter (:func:`deny_syscalls`): a classic BPF program, loaded with ``prctl``, that makes
   ``keyctl``, ``add_key`` and ``request_key`` fail with ``EPERM``, and with them the calls a graded notebook never
   needs: tracing other processes and reading their memory (``ptrace``, ``process_vm_readv``), new namespaces
   (``unshare``, ``setns``, ``clone`` with a namespace flag), mounting, module loading, ``bpf``,
   ``perf_event_open``, ``userfaultfd``, ``io_uring`` (whose requests no filter sees) and the like. ``clone3`` fails
   with ``ENOSYS`` (its flags sit in memory a filter cannot read), so the C library falls back to ``clone``, whose
   flags it can. A call made through another ABI (32-bit ``int 0x80``, x32) fails with ``ENOSYS``.

torch, numpy and IPython use none of these (threads and ``fork`` go through ``clone`` without namespace flags).
The syscall numbers are those of x86_64 and aarch64; on another architecture no filter is installed and
:func:`deny_syscalls` says so.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

__all__ = ["DENIED", "deny_syscalls", "join_fresh_keyring", "filter_program"]

# the calls denied with EPERM, by name (the tables below give their numbers)
DENIED = ("keyctl", "add_key", "request_key", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
          "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen",
          "fsconfig", "fsmount", "fspick", "mount_setattr", "init_module", "finit_module", "delete_module",
          "kexec_load", "kexec_file_load", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
          "io_uring_enter", "io_uring_register", "fanotify_init", "name_to_handle_at", "open_by_handle_at",
          "swapon", "swapoff", "reboot", "acct", "syslog", "quotactl", "quotactl_fd", "lookup_dcookie",
          "settimeofday", "clock_settime", "sethostname", "setdomainname", "vhangup")

_COMMON = {"io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428,
           "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "clone3": 435,
           "mount_setattr": 442, "quotactl_fd": 443}
_TABLES = {  # (AUDIT_ARCH_*, {name: number}); both from the kernel's syscall tables
    "x86_64": (0xC000003E, dict(_COMMON, keyctl=250, add_key=248, request_key=249, ptrace=101,
                                process_vm_readv=310, process_vm_writev=311, kcmp=312, unshare=272, setns=308,
                                mount=165, umount2=166, pivot_root=155, chroot=161, init_module=175,
                                finit_module=313, delete_module=176, kexec_load=246, kexec_file_load=320, bpf=321,
                                perf_event_open=298, userfaultfd=323, fanotify_init=300, name_to_handle_at=303,
                                open_by_handle_at=304, swapon=167, swapoff=168, reboot=169, acct=163, syslog=103,
                                quotactl=179, lookup_dcookie=212, settimeofday=164, clock_settime=227,
                                sethostname=170, setdomainname=171, vhangup=153, clone=56)),
    "aarch64": (0xC00000B7, dict(_COMMON, keyctl=219, add_key=217, request_key=218, ptrace=117,
                                 process_vm_readv=270, process_vm_writev=271, kcmp=272, unshare=97, setns=268,
                                 mount=40, umount2=39, pivot_root=41, chroot=51, init_module=105, finit_module=273,
                                 delete_module=106, kexec_load=104, kexec_file_load=294, bpf=280,
                                 perf_event_open=241, userfaultfd=282, fanotify_init=262, name_to_handle_at=264,
                                 open_by_handle_at=265, swapon=224, swapoff=225, reboot=142, acct=89, syslog=116,
                                 quotactl=60, lookup_dcookie=18, settimeofday=170, clock_settime=112,
                                 sethostname=161, setdomainname=162, vhangup=58, clone=220)),
}
_TABLES["arm64"] = _TABLES["aarch64"]

# clone's flags that make a namespace (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET)
NAMESPACE_FLAGS = 0x7E020000
X32_BIT = 0x40000000

# classic BPF (linux/filter.h, linux/seccomp.h)
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
_KEYCTL_JOIN_SESSION_KEYRING = 1


def filter_program(machine: str | None = None) -> list[tuple[int, int, int, int]]:
    """The filter as ``(code, jt, jf, k)`` instructions for ``machine`` (default: this one).

    Layout: check the ABI; load the call's number; one ``jeq`` per denied call (jumping to the ``EPERM`` return);
    ``clone3`` to ``ENOSYS``; for ``clone``, test its flags (argument 0, low word) against the namespace flags;
    allow everything else. Raises OSError for an architecture without a table.
    """
    machine = machine or platform.machine()
    if machine not in _TABLES:
        raise OSError(f"no seccomp table for {machine}")
    arch, numbers = _TABLES[machine]
    body: list = [("ld", 4), ("jeq", arch, "next", "enosys"), ("ld", 0)]
    if machine == "x86_64":
        body.append(("jge", X32_BIT, "enosys", "next"))
    body += [("jeq", numbers[name], "eperm", "next") for name in DENIED]
    body.append(("jeq", numbers["clone3"], "enosys", "next"))
    body += [("jeq", numbers["clone"], "next", "allow"), ("ld", 16), ("jset", NAMESPACE_FLAGS, "eperm", "allow")]
    labels = {"allow": len(body), "eperm": len(body) + 1, "enosys": len(body) + 2}

    def offset(i: int, target: str) -> int:
        return 0 if target == "next" else labels[target] - i - 1

    program = []
    for i, op in enumerate(body):
        if op[0] == "ld":
            program.append((_LD_W_ABS, 0, 0, op[1]))
        else:
            code = {"jeq": _JEQ_K, "jge": _JGE_K, "jset": _JSET_K}[op[0]]
            program.append((code, offset(i, op[2]), offset(i, op[3]), op[1]))
    program += [(_RET_K, 0, 0, _RET_ALLOW), (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM),
                (_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    if any(not 0 <= jt < 256 or not 0 <= jf < 256 for _, jt, jf, _ in program):
        raise OSError("seccomp filter: a jump too long for classic BPF")
    return program


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def deny_syscalls() -> str:
    """Install the filter on this process (inherited by all it forks; never removable). Returns what it did.

    Sets ``PR_SET_NO_NEW_PRIVS`` first (an unprivileged process may install a filter only then). Raises OSError
    when the kernel refuses.
    """
    program = filter_program()
    raw = b"".join(struct.pack("=HBBI", *ins) for ins in program)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(program), ctypes.cast(buffer, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    for args in ((_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
                 (_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0)):
        if libc.prctl(*(ctypes.c_ulong(a) for a in args)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"seccomp filter: {errno.errorcode.get(err, err)}")
    return f"seccomp filter ({len(DENIED)} calls denied)"


def join_fresh_keyring() -> None:
    """Make this process's session keyring a new, empty, anonymous one (``KEYCTL_JOIN_SESSION_KEYRING``, NULL).

    Raises OSError when the kernel refuses (no keyrings configured, a key quota reached).
    """
    machine = platform.machine()
    if machine not in _TABLES:
        raise OSError(f"no keyctl number for {machine}")
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.syscall(ctypes.c_long(_TABLES[machine][1]["keyctl"]), ctypes.c_long(_KEYCTL_JOIN_SESSION_KEYRING),
                          ctypes.c_void_p(None))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"keyctl(JOIN_SESSION_KEYRING): {errno.errorcode.get(err, err)}")
