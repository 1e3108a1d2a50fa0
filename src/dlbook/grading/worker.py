"""The grading process (started by :mod:`dlbook.grading.batch`): runs the tests, never the submissions.

    python -m dlbook.grading.worker SET_ID WORKDIR NOTEBOOK... [--extra-tests X] [--jobs N] [--timeout S]
                                    [--cpu S] [--memory-mb MB] [--hide PATH] [--isolation auto|rlimits|require]

This process imports torch, forks the *zygote* (:mod:`dlbook.grading.sandbox`, which imports IPython and never
any test), and only then imports the set's tests and the instructor's hidden ones. For submission ``i`` it

1. makes a socket pair and sends one end to the zygote, which forks the submission's sandboxed child;
2. forks a *grading child* of its own with the other end. The grading child reads the notebook (as JSON, never
   running it), asks the submission to run its code cells one at a time, and grades question ``qN`` right after
   the cell that calls ``check("qN")`` (and every question left at the end) by running the tests here, with
   ``ns`` a proxy (:mod:`dlbook.grading.proxy`). Each question's result goes to this process through a pipe as
   soon as it is known, so a later hang or crash keeps it;
3. kills the submission (its process group, and with it its PID namespace, then every process left in its control
   group) when it runs past the wall-clock timeout (counted from its start), and the grading child (a
   process-group leader) with it; a grading child still waiting on its socket after the submission ended (a
   process the submission left behind holds the other end) is ended too. It prints one JSON line per submission
   on stdout: the records and how the submission ended (its exit code, reported by the zygote, and whether its
   control group ran out of memory).

Hidden tests are imported without writing bytecode, and the sandbox masks each hidden file, its ``__pycache__``
bytecode and its folder (:func:`_masks`). Each grading child's address space is capped (:data:`GRADER_HEADROOM_MB`
above what it holds at its start).

No file the submission could write is read. This process and its grading children are not dumpable
(``PR_SET_DUMPABLE``), so a process of the same user cannot attach to them or read their memory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import select
import signal
import socket
import sys
import time
import traceback

from dlbook.grading.process_group import kill_group

_CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([A-Za-z][A-Za-z0-9_.-]*)["']\s*\)""")
_ADDRESS = re.compile(r" at 0x[0-9A-Fa-f]+")
STARTUP_LIMIT_S = 300
AFTER_DONE_S = 2.0  # how long a submission may take to leave after the grader is done with it
GRADER_HEADROOM_MB = 3072  # the memory a grading child may add to what it holds when it starts


def check_calls(source: str) -> list[str]:
    """The question ids a cell asks about with ``check("qN")``, in order."""
    return _CHECK_CALL.findall(source)


def _not_dumpable() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except (OSError, AttributeError):
        pass


def _cap_memory(headroom_mb: int) -> None:
    """Limit this process's address space to what it maps now plus ``headroom_mb``: a test's arithmetic on a huge
    answer then fails that test (MemoryError, RuntimeError), it cannot exhaust the machine."""
    try:
        with open("/proc/self/statm") as f:
            now = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return
    limit = now + headroom_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit if hard == resource.RLIM_INFINITY else min(hard, limit)))
    except (ValueError, OSError):
        pass


# ---------------------------------------------------------------------------------------------- one submission


def grade_notebook(notebook: str, channel, tests, hidden: frozenset, emit) -> None:
    """Have the submission run its cells; grade each question here; ``emit`` each record (in the grading child)."""
    from dlbook.grading import wire
    from dlbook.grading.core import SubmissionGone, run_question
    from dlbook.grading.sets import question_ids

    with open(notebook, encoding="utf-8") as f:
        nb = json.load(f)
    first, _ = channel.request_first()
    if "failed" in first:  # the sandbox could not start: its message says what failed
        emit({"failure": str(first["failed"])[:500]})
        raise SubmissionGone(str(first["failed"])[:500])
    emit({"isolation": str(first.get("hello", "unknown"))[:600]})
    questions = question_ids(tests)
    graded: set[str] = set()

    def grade(qid: str) -> None:
        result = run_question(qid, tests, channel, hidden=hidden)
        emit({"question": result.to_dict()})
        graded.add(qid)

    code_cells = [c for c in nb["cells"] if c.get("cell_type") == "code"]
    for number, cell in enumerate(code_cells, start=1):
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        try:
            answer, _ = channel.request({"op": "run", "source": source})
        except wire.WireError as err:
            answer = {"ran": True, "error": ["ProtocolError", str(err)]}
        if answer.get("ran") is not True:
            answer = {"error": ["ProtocolError", "the answer to 'run this cell' was malformed"]}
        error = answer.get("error")
        if isinstance(error, list) and len(error) == 2:
            name, message = (_ADDRESS.sub("", str(x))[:500] for x in error)
            emit({"cell_error": f"code cell {number}: {name}" + (f": {message}" if message else "")})
        for qid in check_calls(source):
            if qid in questions and qid not in graded:
                grade(qid)
    for qid in questions:
        if qid not in graded:
            grade(qid)
    emit({"done": True})
    try:
        wire.send_frame(channel.sock, {"op": "exit"})
    except OSError:
        pass


def _grading_child(notebook: str, sock: socket.socket, out_fd: int, tests, hidden) -> None:
    """In the forked grading child: grade, stream records to the parent, leave."""
    from dlbook.grading.errors import SubmissionGone
    from dlbook.grading.proxy import Channel

    code = 0
    try:
        os.setpgid(0, 0)  # a group of its own, so a timeout's kill reaches it and nothing else
        _cap_memory(GRADER_HEADROOM_MB)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        out = os.fdopen(out_fd, "w", encoding="utf-8")

        def emit(record: dict) -> None:
            out.write(json.dumps(record, sort_keys=True) + "\n")
            out.flush()

        try:
            grade_notebook(notebook, Channel(sock), tests, hidden, emit)
        except SubmissionGone:
            pass
    except BaseException:  # noqa: BLE001  (a bug of the grader's: report it and leave)
        code = 70
        try:
            sys.stderr.write(traceback.format_exc())
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


# ---------------------------------------------------------------------------------------------- the zygote


def _start_zygote(base_config: dict) -> tuple[int, socket.socket]:
    """Fork the zygote now, before any test is imported: it holds torch and nothing of the tests."""
    kind = socket.SOCK_SEQPACKET if sys.platform.startswith("linux") else socket.SOCK_DGRAM  # keeps messages whole
    ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            ours.close()
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            sys.argv = sys.argv[:1]
            os.chdir("/")
            from dlbook.grading import sandbox

            sandbox.main(theirs, base_config)
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            code = 70
        finally:
            os._exit(code)
    theirs.close()
    return pid, ours


class _Submission:
    def __init__(self, index: int, notebook: str, deadline: float):
        self.index, self.notebook, self.deadline = index, notebook, deadline
        self.grader_pid: int | None = None
        self.grader_code: int | None = None
        self.pipe: int | None = None
        self.buffer = bytearray()
        self.sub_pid: int | None = None
        self.sub_code: int | None = None
        self.sub_exited = False
        self.timed_out = False
        self.grader_done_at: float | None = None
        self.sub_exited_at = 0.0

    def records(self) -> list[dict]:
        found = []
        for line in self.buffer.decode("utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                found.append(record)
        return found


def serve(set_id: str, workdir: str, notebooks: list[str], extra: list[str], jobs: int, timeout: float,
          cpu: float | None, memory_mb: int | None, hide: list[str] = (), isolation: str = "auto") -> None:
    """Grade ``notebooks`` with at most ``jobs`` submissions at a time; one JSON line each on stdout."""
    from dlbook.grading.cgroups import Groups
    from dlbook.grading.sandbox import MAX_PROCESSES

    _not_dumpable()
    root = os.path.join(workdir, ".root")
    os.makedirs(root, exist_ok=True)
    hidden_paths = _masks([workdir, *notebooks, *extra, *hide])
    groups = Groups(jobs=jobs)  # one control group per submission, where the system has them
    base_config = {"root": root, "hide": hidden_paths, "cpu": cpu, "memory_mb": memory_mb,
                   "namespaces": isolation != "rlimits", "require": isolation == "require", "tmp_mb": 512,
                   "cgroup_how": groups.how}
    zygote, control = _start_zygote(base_config)  # it gets the paths to hide, never the tests
    try:
        _serve(set_id, workdir, notebooks, extra, jobs, timeout, memory_mb, groups, zygote, control, MAX_PROCESSES)
    finally:
        kill_group(zygote)
        try:
            os.kill(zygote, signal.SIGKILL)
            os.waitpid(zygote, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        groups.close()


def _serve(set_id, workdir, notebooks, extra, jobs, timeout, memory_mb, groups, zygote, control,
           max_processes) -> None:
    from dlbook.grading.loader import load_tests

    tests, hidden = load_tests(set_id, extra)
    ready, _, _ = select.select([control], [], [], STARTUP_LIMIT_S)
    if not ready or json.loads(control.recv(1 << 16) or b"{}").get("ready") is not True:
        raise SystemExit("dlbook-grade: the sandbox process did not start")

    pending = list(enumerate(notebooks))
    running: dict[int, _Submission] = {}
    stdout = sys.stdout

    def finish(sub: _Submission, code: int | None) -> None:
        if sub.sub_pid and not sub.sub_exited:
            kill_group(sub.sub_pid)
        out_of_memory = groups.oom_kills(str(sub.index)) > 0
        groups.remove(str(sub.index))  # whatever left the process group (a setsid daemon) goes too
        if sub.grader_pid and sub.grader_code is None:
            kill_group(sub.grader_pid)
            try:
                os.kill(sub.grader_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(sub.grader_pid, 0)
            except ChildProcessError:
                pass
        if sub.pipe is not None:
            _drain(sub)
            os.close(sub.pipe)
        stdout.write(json.dumps({"index": sub.index, "records": sub.records(),
                                 "exit": {"code": code, "timed_out": sub.timed_out,
                                          "out_of_memory": out_of_memory}}, sort_keys=True) + "\n")
        stdout.flush()
        running.pop(sub.index, None)

    while pending or running:
        while pending and len(running) < jobs:
            index, notebook = pending.pop(0)
            try:
                procs = groups.make(str(index), memory_mb * 1024 * 1024 if memory_mb else None, max_processes)
            except OSError:
                procs = []
            ours, theirs = socket.socketpair()
            config = {"fallback_cwd": os.path.join(workdir, str(index)), "cgroup": procs}
            socket.send_fds(control, [json.dumps({"index": index, "config": config}).encode()], [theirs.fileno()])
            theirs.close()
            sub = _Submission(index, notebook, time.monotonic() + timeout)
            read_end, write_end = os.pipe()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                os.close(read_end)
                control.close()
                _grading_child(notebook, ours, write_end, tests, hidden)
            try:
                os.setpgid(pid, pid)  # also here, so a kill can never miss the group (the child does it too)
            except OSError:
                pass
            ours.close()
            os.close(write_end)
            sub.grader_pid, sub.pipe = pid, read_end
            running[index] = sub

        watch = [control] + [s.pipe for s in running.values() if s.pipe is not None]
        readable, _, _ = select.select(watch, [], [], 0.02)
        if control in readable:
            while True:
                try:
                    data = control.recv(1 << 16, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                if not data:
                    raise SystemExit("dlbook-grade: the sandbox process stopped")
                message = json.loads(data)
                sub = running.get(message.get("started", message.get("exited")))
                if sub is None:
                    continue
                if "started" in message:
                    sub.sub_pid = int(message["pid"])
                else:
                    sub.sub_exited, sub.sub_code = True, message.get("code")
                    sub.sub_exited_at = time.monotonic()
        for sub in list(running.values()):
            if sub.pipe is not None and sub.pipe in readable:
                _drain(sub)
        now = time.monotonic()
        for sub in list(running.values()):
            if sub.grader_code is None:
                pid, status = os.waitpid(sub.grader_pid, os.WNOHANG)
                if pid:
                    sub.grader_code = os.waitstatus_to_exitcode(status)
                    sub.grader_done_at = now
            if sub.grader_code is not None:
                records = (_drain(sub), sub.records())[1]
                if sub.grader_code != 0:
                    finish(sub, sub.grader_code)
                elif any(r.get("done") for r in records):
                    finish(sub, 0)
                elif sub.sub_exited:
                    finish(sub, sub.sub_code)
                elif now > sub.grader_done_at + AFTER_DONE_S and sub.sub_pid:
                    kill_group(sub.sub_pid)  # the zygote reports it killed; finished on that report
                    groups.kill(str(sub.index))
                    sub.grader_done_at = now
            elif sub.sub_exited and now > sub.sub_exited_at + AFTER_DONE_S:
                # The submission is gone but the grading child still waits on the socket: a process the
                # submission left behind holds the other end. What was graded is kept.
                finish(sub, sub.sub_code)
            elif now > sub.deadline and sub.sub_pid:
                sub.timed_out = True
                finish(sub, None)


def _masks(paths: list[str]) -> list[str]:
    """What the sandbox masks for ``paths`` (real paths): each path; for a ``.py`` file, its bytecode
    (``__pycache__/<stem>.*.pyc``) and its folder, unless that folder holds something the sandbox imports from
    (a folder on ``sys.path``, or one of a module already imported)."""
    import glob

    found = set()
    for path in paths:
        if not os.path.exists(path):
            continue
        real = os.path.realpath(path)
        found.add(real)
        if real.endswith(".py") and os.path.isfile(real):
            folder, stem = os.path.dirname(real), os.path.basename(real)[:-3]
            found.update(glob.glob(os.path.join(glob.escape(folder), "__pycache__", glob.escape(stem) + ".*.pyc")))
            if not _needed_by_imports(folder):
                found.add(folder)
    return sorted(found)


def _needed_by_imports(folder: str) -> bool:
    inside = folder.rstrip("/") + "/"
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if real and (real == folder or real.startswith(inside)):
            return True
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and os.path.realpath(file).startswith(inside):
            return True
    return False


def _drain(sub: _Submission) -> None:
    if sub.pipe is None:
        return
    while True:
        ready, _, _ = select.select([sub.pipe], [], [], 0)
        if not ready:
            return
        chunk = os.read(sub.pipe, 1 << 16)
        if not chunk:
            return
        sub.buffer += chunk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlbook.grading.worker")
    parser.add_argument("set_id")
    parser.add_argument("workdir")
    parser.add_argument("notebooks", nargs="+")
    parser.add_argument("--extra-tests", action="append", default=[])
    parser.add_argument("--hide", action="append", default=[])
    parser.add_argument("--isolation", choices=["auto", "rlimits", "require"], default="auto")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--cpu", type=float, default=None)
    parser.add_argument("--memory-mb", type=int, default=None)
    args = parser.parse_args(argv)
    serve(args.set_id, args.workdir, args.notebooks, args.extra_tests, args.jobs, args.timeout, args.cpu,
          args.memory_mb, hide=args.hide, isolation=args.isolation)
    return 0


if __name__ == "__main__":
    sys.exit(main())
