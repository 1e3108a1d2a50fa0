"""Issue 25, replayed: each hole a hostile (or merely unlucky) submission found in ``dlbook-grade`` is closed.

Each test grades real submissions with the command line (or calls the one function at fault) and states the
finding it replays. The grading runs are session fixtures, so a class is graded once per run:

* the *fragile class*: files that each ended the whole run before (a surrogate in a message, a Latin-1 file
  name, a notebook nested 100,000 deep) and a formula as a name;
* the *hostile class* (root, namespaces, ``--jobs 2``): keyrings, the instructor's environment, exit 71, hidden
  tests read by module name and from bytecode, a hidden test's inputs written into the feedback, memory held in
  a memfd and by forked children;
* the *user-namespace class* (the path of a non-root instructor): the process cap, keyrings, the environment;
* the *CPU class* (``--jobs 2``): a fork tree of spinners beside an honest student;
* the *rlimits class*: a detached process holding the grading socket;
* a grading run from a virtualenv reached through a symbolic link.

Without namespaces (or not as root on Linux x86_64) the replays are skipped: they need the sandbox to be safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch

from dlbook.grading.student import read_notebook

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "grading"
EXERCISE = ROOT / "exercises" / "00_preliminaries.ipynb"

LINUX_ROOT = sys.platform.startswith("linux") and os.geteuid() == 0 and platform.machine() == "x86_64"


def _needs_sandbox():
    from dlbook.grading.sandbox import namespaces_available

    if not LINUX_ROOT or not namespaces_available():
        pytest.skip("the replays need Linux x86_64, root and namespaces (the attacks must run in the sandbox)")


def _notebook(base: Path, *cells: str, after: str | None = None) -> dict:
    """``base`` with code cells added after its setup cell, or after the cell whose source contains ``after``."""
    nb = read_notebook(base)
    index = 3
    if after is not None:
        index = next(i for i, c in enumerate(nb["cells"]) if after in "".join(c["source"])) + 1
    for k, code in enumerate(cells):
        nb["cells"].insert(index + k, {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                                       "source": [code]})
    return nb


def _write(folder: Path, name: str | bytes, nb: dict) -> None:
    raw = json.dumps(nb).encode()
    if isinstance(name, bytes):
        with open(os.path.join(os.fsencode(str(folder)), name), "wb") as f:
            f.write(raw)
    else:
        (folder / name).write_bytes(raw)


def _grade(subs: Path, out: Path, *options: str, env: dict | None = None, python: str = sys.executable,
           timeout: float = 600, prefix: list[str] = ()) -> tuple[subprocess.CompletedProcess, float]:
    args = [*prefix, python, "-m", "dlbook.grading", "grade", str(EXERCISE),
            *map(str, sorted(subs.iterdir())), "--out", str(out), *options]
    start = time.monotonic()
    proc = subprocess.run(args, capture_output=True, timeout=timeout, env=env, cwd=ROOT)
    return proc, time.monotonic() - start


def _report(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.json").read_text(encoding="utf-8"))


def _errors(report: dict) -> str:
    return " | ".join(report["cell_errors"])


# ---------------------------------------------------------------------------------------------- keyrings
# The kernel's keyrings through ctypes (x86_64 numbers: add_key 248, keyctl 250; KEYCTL_SEARCH 10, KEYCTL_READ 11;
# the session keyring is -3, the user keyring -4). Each probe reports what worked in a cell error.

KEYRING_PROBE = r'''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
found = []
def keyctl(*args):
    r = libc.syscall(ctypes.c_long(250), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    return r, ctypes.get_errno()
key, err = keyctl(10, -3, b"user", b"dlbook-planted-KEYTAG", 0)
if key > 0:
    buf = ctypes.create_string_buffer(200)
    n, _ = keyctl(11, key, buf, 200)
    found.append("READ " + buf.raw[:max(n, 0)].decode(errors="replace"))
r = libc.syscall(ctypes.c_long(248), b"user", b"dlbook-left-KEYTAG", b"answers", ctypes.c_long(7), ctypes.c_long(-4))
if r > 0:
    found.append("WROTE user keyring")
key, err = keyctl(10, -4, b"user", b"dlbook-left-KEYTAG-earlier", 0)
if key > 0:
    found.append("FOUND an earlier run's key")
raise RuntimeError("KEYRING " + ("; ".join(found) or "nothing"))
'''

ENV_PROBE = r'''
import os
seen = [k for k, v in os.environ.items() if "ENVTAG" in v]
try:
    with open("/proc/self/environ", "rb") as f:
        if b"ENVTAG" in f.read():
            seen.append("/proc/self/environ")
except OSError:
    pass
raise RuntimeError("ENVIRONMENT " + (", ".join(seen) or "clean"))
'''


def _keyring_wrapper(tag: str) -> list[str]:
    """A command prefix: join a new session keyring holding a planted key, then exec the grader in it."""
    code = ("import ctypes, os, sys\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "libc.syscall(ctypes.c_long(250), ctypes.c_long(1), ctypes.c_void_p(None))\n"
            f"libc.syscall(ctypes.c_long(248), b'user', b'dlbook-planted-{tag}', b'SECRET-{tag}', ctypes.c_long(13), "
            "ctypes.c_long(-3))\n"
            "os.execv(sys.argv[1], sys.argv[1:])\n")
    return [sys.executable, "-c", code]


def _leave_key_for_a_later_run(tag: str) -> None:
    """What the previous run's attacker would have left in user nobody's keyring (done here as nobody)."""
    pid = os.fork()
    if pid == 0:
        try:
            import ctypes

            os.setgid(65534)
            os.setuid(65534)
            ctypes.CDLL(None).syscall(ctypes.c_long(248), b"user", f"dlbook-left-{tag}-earlier".encode(),
                                      b"answers", ctypes.c_long(7), ctypes.c_long(-4))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


# ---------------------------------------------------------------------------------------------- the hostile class

SURROGATE = 'raise ValueError(chr(0xD800) + " in a message")\n'
MEMFD_HOG = r'''
import os
fd = os.memfd_create("hog")
chunk = b"x" * (1 << 24)
for _ in range(160):
    os.write(fd, chunk)
raise RuntimeError("HELD 2560 MiB in a memfd")
'''
FORK_HOG = r'''
import mmap, os, select
r, w = os.pipe()
for _ in range(3):
    if os.fork() == 0:
        m = mmap.mmap(-1, 1 << 30)
        for i in range(0, 1 << 30, 1 << 24):
            m[i:i + (1 << 24)] = b"x" * (1 << 24)
        os.write(w, b"1")
        select.select([], [], [], 60)
        os._exit(0)
got = b""
while len(got) < 3 and select.select([r], [], [], 30)[0]:
    got += os.read(r, 3)
if len(got) == 3:
    raise RuntimeError("HELD 3 GiB in 3 processes")
'''


def _hidden_module_files(tag: str) -> tuple[str, Path, Path]:
    """A hidden test importable by name, and one given as a file whose bytecode sits beside it, both in a folder
    the sandbox can see (the virtualenv's site-packages). Returns (module name, its file, the package folder)."""
    site = Path(sysconfig.get_paths()["purelib"])
    name = f"dlbook_hidden_{tag}"
    module = site / f"{name}.py"
    module.write_text("from dlbook.grading import question\n"
                      f"SECRET = 'module-{tag}'\n"
                      "@question('q1', points=1)\n"
                      f"def hidden_by_module_{tag}(ns):\n"
                      "    assert ns.guess_module == SECRET\n")
    package = site / f"dlbook_hiddenpyc_{tag}"
    package.mkdir()
    test_file = package / "tests.py"
    test_file.write_text("from dlbook.grading import question\n"
                         f"SECRET = 'pyc-{tag}'\n"
                         "@question('q1', points=1)\n"
                         f"def hidden_by_file_{tag}(ns):\n"
                         "    assert ns.guess_pyc == SECRET\n")
    import py_compile

    py_compile.compile(str(test_file), doraise=True)  # bytecode an earlier import left beside it
    return name, module, package


HIDDEN_READER = r'''
import glob, re
guess_module = guess_pyc = "unknown"
try:
    import MODNAME
    guess_module = MODNAME.SECRET
except Exception:
    pass
for path in glob.glob("SITE/dlbook_hiddenpyc_TAG/__pycache__/*.pyc"):
    try:
        found = re.search(rb"pyc-[0-9a-f]+", open(path, "rb").read())
        guess_pyc = found.group().decode() if found else guess_pyc
    except OSError:
        pass
'''


LEAK_INPUTS = r'''
def bce_with_logits(logits, targets):
    raise ValueError("inputs " + repr(logits.tolist()))
'''


@pytest.fixture(scope="module")
def fragile(tmp_path_factory):
    """Files that each ended the whole run before: a surrogate in a message, a Latin-1 name, a notebook nested
    100,000 deep; and a formula as a name."""
    _needs_sandbox()
    folder = tmp_path_factory.mktemp("fragile")
    subs = folder / "subs"
    subs.mkdir()
    correct = FIXTURES / "correct.ipynb"
    _write(subs, "surrogate.ipynb", _notebook(correct, SURROGATE))
    _write(subs, b"Jos\xe9.ipynb", _notebook(correct))
    (subs / "deep.ipynb").write_text('{"cells": ' + "[" * 100_000 + "]" * 100_000 + "}")
    _write(subs, "=2+5.ipynb", _notebook(FIXTURES / "blank.ipynb"))
    proc, _ = _grade(subs, folder / "out", "--jobs", "2", "--timeout", "60")
    return folder / "out", {"rc": proc.returncode, "stderr": proc.stderr.decode("utf-8", "replace")[-4000:]}


def _produce_hostile(folder: Path) -> dict:
    tag = secrets.token_hex(4)
    subs = folder / "subs"
    subs.mkdir()
    correct = FIXTURES / "correct.ipynb"
    _write(subs, "leak_inputs.ipynb", _notebook(correct, LEAK_INPUTS, after="def bce_with_logits"))
    _write(subs, "keyring.ipynb", _notebook(FIXTURES / "blank.ipynb", KEYRING_PROBE.replace("KEYTAG", tag)))
    _write(subs, "environment.ipynb", _notebook(FIXTURES / "blank.ipynb", ENV_PROBE.replace("ENVTAG", tag)))
    _write(subs, "exit71.ipynb", _notebook(correct, "import os\nos._exit(71)\n", after='check("q2")'))
    _write(subs, "memfd_hog.ipynb", _notebook(FIXTURES / "blank.ipynb", MEMFD_HOG))
    _write(subs, "fork_hog.ipynb", _notebook(FIXTURES / "blank.ipynb", FORK_HOG))
    name, module, package = _hidden_module_files(tag)
    site = sysconfig.get_paths()["purelib"]
    reader = HIDDEN_READER.replace("MODNAME", name).replace("SITE", site).replace("TAG", tag)
    _write(subs, "hidden_reader.ipynb", _notebook(FIXTURES / "blank.ipynb", reader))
    _leave_key_for_a_later_run(tag)
    env = dict(os.environ, DLBOOK_TEST_TOKEN=f"token-{tag}")
    try:
        proc, wall = _grade(subs, folder / "out", "--jobs", "2", "--timeout", "60", "--memory-mb", "2048",
                            "--extra-tests", name, "--extra-tests", str(package / "tests.py"),
                            "--extra-tests", str(FIXTURES / "hidden_tests.py"),
                            env=env, prefix=_keyring_wrapper(tag))
    finally:
        module.unlink()
        for path in sorted(package.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        package.rmdir()
    bytecode_written = any(Path(site, "__pycache__").glob(f"{name}.*.pyc"))
    return {"tag": tag, "rc": proc.returncode, "stdout": proc.stdout.decode("utf-8", "replace"),
            "stderr": proc.stderr.decode("utf-8", "replace")[-4000:], "wall": wall,
            "bytecode_written": bytecode_written}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    _needs_sandbox()
    folder = tmp_path_factory.mktemp("hostile")
    facts = _produce_hostile(folder)
    return folder / "out", facts


def test_a_surrogate_in_a_message_costs_nothing_but_its_own_row(fragile):
    """Found: ValueError(chr(0xD800)) made the run exit 2 with no grades.csv. Now every row is written, the
    message keeps a replacement character, and the attacker's answers still count."""
    out, facts = fragile
    assert facts["rc"] == 0, facts["stderr"]
    assert (out / "grades.csv").exists()
    report = _report(out, "surrogate")
    assert report["total"] == 14 and "\ufffd in a message" in _errors(report)  # 14: the hidden q1 tests fail


def test_a_latin1_file_name_is_read_as_latin1(fragile):
    """Found: José.ipynb written by an old system (Latin-1 bytes) ended the run. Now the student is José."""
    out, facts = fragile
    assert facts["rc"] == 0, facts["stderr"]
    assert _report(out, "José")["total"] == 14
    assert "\nJosé,3,4,4,3,0,14,ok\n" in (out / "grades.csv").read_text(encoding="utf-8")


def test_a_notebook_nested_100000_deep_is_an_unreadable_row(fragile):
    """Found: a 200 kB notebook nested 100,000 deep ended the run (RecursionError) before anyone was graded."""
    out, facts = fragile
    assert facts["rc"] == 0, facts["stderr"]
    report = _report(out, "deep")
    assert report["status"] == "unreadable notebook" and "nested too deeply" in report["detail"]


def test_a_formula_as_a_file_name_is_text_in_grades_csv(fragile):
    """Found: a file named =2+5.ipynb put a formula into grades.csv. Now the cell starts with an apostrophe."""
    out, _ = fragile
    lines = (out / "grades.csv").read_text(encoding="utf-8").splitlines()
    assert "'=2+5,0,0,0,0,0,0,ok" in lines and not any(line.startswith("=") for line in lines)


def test_a_keyrings_are_out_of_reach_as_root(hostile):
    """Found: the sandbox kept the grader's session keyring (a planted secret was read) and user nobody's
    keyring outlived a run (a classmate's answers were read). Now nothing is read, written or found."""
    out, facts = hostile
    report = _report(out, "keyring")
    assert "KEYRING nothing" in _errors(report), _errors(report)
    assert "seccomp filter" in report["isolation"] and "fresh session keyring" in report["isolation"]


def test_a_the_instructors_environment_stays_out_of_the_sandbox(hostile):
    """Found: the instructor's environment (tokens included) was visible in the sandbox."""
    out, _ = hostile
    assert "ENVIRONMENT clean" in _errors(_report(out, "environment"))


def test_a_exit_71_is_a_crash_not_a_refused_sandbox(hostile):
    """Found: a submission that called os._exit(71) was reported "not run (no sandbox)" with its points kept."""
    out, _ = hostile
    report = _report(out, "exit71")
    assert report["status"] == "crashed (exit 71)" and report["total"] == 8


def test_a_hidden_test_inputs_cannot_be_written_into_the_feedback(hostile):
    """Found: a function that raises with its arguments in the message wrote a hidden test's inputs into the
    feedback. Now a hidden row says only that it raised; the message stays in the instructor's summary.md."""
    out, _ = hostile
    report = _report(out, "leak_inputs")
    row = next(t for q in report["questions"] for t in q["tests"] if t["name"] == "bce_is_stable_in_float32")
    assert row["hidden"] and row["status"] == "error" and "50.0" not in row["message"], row
    feedback = (out / "leak_inputs.md").read_text(encoding="utf-8")
    assert "bce\\_is\\_stable\\_in\\_float32 (hidden test): error: raised an exception" in feedback
    assert "50.0" not in feedback.split("bce\\_is\\_stable\\_in\\_float32")[1].splitlines()[0]
    assert "50.0" in (out / "summary.md").read_text(encoding="utf-8")


def test_b_hidden_tests_by_module_name_and_their_bytecode_are_invisible(hostile):
    """Found: hidden tests named as a module were importable in the sandbox, and a hidden file's __pycache__
    was readable (0 -> 2/2 on the hidden question). Now both hidden tests fail and no bytecode is written."""
    out, facts = hostile
    rows = {t["name"]: t for q in _report(out, "hidden_reader")["questions"] for t in q["tests"]}
    tag = facts["tag"]
    assert rows[f"hidden_by_module_{tag}"]["status"] == "fail" and rows[f"hidden_by_module_{tag}"]["hidden"]
    assert rows[f"hidden_by_file_{tag}"]["status"] == "fail"
    assert not facts["bytecode_written"]


def test_e_memory_in_a_memfd_and_in_forked_children_counts(hostile):
    """Found: under --memory-mb 2048 a memfd held 2.5 GiB and three forked children 1 GiB each. Now the
    submission's control group holds at most 2 GiB for the whole tree."""
    out, _ = hostile
    for name in ("memfd_hog", "fork_hog"):
        report = _report(out, name)
        assert "HELD" not in _errors(report), (name, report["status"], _errors(report))
        assert "cgroup" in report["isolation"]
    assert _report(out, "memfd_hog")["status"] == "crashed (out of memory: over --memory-mb)"


# ---------------------------------------------------------------------------------------------- user namespace

FORKER = r'''
import os, select
n = 0
for _ in range(600):
    try:
        if os.fork() == 0:
            select.select([], [], [], 60)
            os._exit(0)
        n += 1
    except OSError:
        break
raise RuntimeError(f"FORKED {n}")
'''


@pytest.fixture(scope="module")
def userns(tmp_path_factory):
    _needs_sandbox()
    folder = tmp_path_factory.mktemp("userns")
    subs = folder / "subs"
    subs.mkdir()
    tag = secrets.token_hex(4)
    blank = FIXTURES / "blank.ipynb"
    _write(subs, "forker.ipynb", _notebook(blank, FORKER))
    _write(subs, "keyring.ipynb", _notebook(blank, KEYRING_PROBE.replace("KEYTAG", tag)))
    _write(subs, "environment.ipynb", _notebook(blank, ENV_PROBE.replace("ENVTAG", tag)))
    env = dict(os.environ, DLBOOK_SANDBOX_USERNS="1", DLBOOK_TEST_TOKEN=f"token-{tag}")
    proc, _ = _grade(subs, folder / "out", "--jobs", "2", "--timeout", "60", "--isolation", "require", env=env,
                     prefix=_keyring_wrapper(tag))
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return folder / "out"


def test_c_the_user_namespace_path_has_a_process_cap(userns):
    """Found: without root (the user-namespace path) a submission started 600 processes. Now the control group's
    pids.max (512) stops it."""
    report = _report(userns, "forker")
    assert "user" in report["isolation"]
    forked = int(_errors(report).split("FORKED ")[1].split()[0])
    assert forked < 512, _errors(report)


def test_c_keyrings_and_environment_are_closed_in_the_user_namespace_path(userns):
    """Found: in the user-namespace path too, the grader's session keyring was readable and writable."""
    assert "KEYRING nothing" in _errors(_report(userns, "keyring"))
    assert "ENVIRONMENT clean" in _errors(_report(userns, "environment"))


# ---------------------------------------------------------------------------------------------- CPU

SPINNERS = r'''
import os, time
for _ in range(64):
    if os.fork() == 0:
        while True:
            pass
time.sleep(60)
'''
HONEST_WORK = r'''
import time
start = time.process_time()
while time.process_time() - start < 1:  # an honest CPU second (a small training run, say)
    pass
'''


def test_e_a_fork_tree_of_spinners_does_not_starve_a_classmate(tmp_path):
    """Found: with --jobs 2 a fork tree of CPU spinners took an honest classmate from full marks to a timeout.
    Now each submission's control group has the same CPU weight, and the classmate keeps every point."""
    _needs_sandbox()
    subs = tmp_path / "subs"
    subs.mkdir()
    _write(subs, "spinner.ipynb", _notebook(FIXTURES / "blank.ipynb", SPINNERS))
    _write(subs, "honest.ipynb", _notebook(FIXTURES / "correct.ipynb", HONEST_WORK))
    proc, _ = _grade(subs, tmp_path / "out", "--jobs", "2", "--timeout", "60")
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    honest = _report(tmp_path / "out", "honest")
    assert (honest["status"], honest["total"]) == ("ok", 14), honest["status"]


# ---------------------------------------------------------------------------------------------- rlimits

HOLDER = r'''
import ctypes, os, select
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        ctypes.CDLL(None).prctl(15, b"dlbook-holder", 0, 0, 0)
        select.select([], [], [], 240)
    os._exit(0)
os.wait()
os._exit(0)
'''


def _holders() -> list[int]:
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == "dlbook-holder":
                found.append(int(comm.parent.name))
    return found


def test_d_a_detached_process_cannot_hang_an_rlimits_run(tmp_path):
    """Found: with --isolation rlimits a detached process holding the grading socket hung the run (384 s instead
    of 18 s, both students "crashed"): the grading child was not a process-group leader and could not be killed.
    Now the run ends soon after the submission does, the classmate keeps their points, and nothing is left."""
    _needs_sandbox()
    subs = tmp_path / "subs"
    subs.mkdir()
    _write(subs, "holder.ipynb", _notebook(FIXTURES / "blank.ipynb", HOLDER))
    _write(subs, "honest.ipynb", _notebook(FIXTURES / "correct.ipynb"))
    try:
        proc, wall = _grade(subs, tmp_path / "out", "--isolation", "rlimits", "--timeout", "30", "--jobs", "2",
                            timeout=200)
        left = _holders()
    finally:
        for pid in _holders():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    honest = _report(tmp_path / "out", "honest")
    assert (honest["status"], honest["total"]) == ("ok", 14)
    assert _report(tmp_path / "out", "holder")["status"] != "ok" or wall < 150
    if left:  # seen on about half the runs on the project's machine, cause not found: an open item of issue 25
        pytest.xfail(f"the run ended and the classmate kept every point, but {len(left)} detached process(es) "
                     f"outlived it (moved out of the submission's control groups before the kill)")


# ---------------------------------------------------------------------------------------------- symlinked venv


def test_a_a_virtualenv_reached_through_a_symbolic_link_works(tmp_path):
    """Found: with `.venv -> /elsewhere/.venv` every submission "crashed (exit 70)" with an empty message."""
    _needs_sandbox()
    link = tmp_path / "venv-link"
    link.symlink_to(Path(sys.prefix).resolve())
    subs = tmp_path / "subs"
    subs.mkdir()
    _write(subs, "honest.ipynb", _notebook(FIXTURES / "correct.ipynb"))
    proc, _ = _grade(subs, tmp_path / "out", "--timeout", "60", python=str(link / "bin" / "python"))
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    honest = _report(tmp_path / "out", "honest")
    assert (honest["status"], honest["total"]) == ("ok", 14), (honest["status"], honest["detail"])


# ---------------------------------------------------------------------------------------------- in-process


def test_a_assert_close_refuses_a_huge_answer_of_the_wrong_shape_before_converting_it():
    """Found: the grading process did arithmetic on an answer before checking its shape (a 15 MiB answer cost
    it +1,471 MiB). Now a wrong shape fails from the shape alone: the peak memory does not grow."""
    code = ("import resource, torch\n"
            "from dlbook.grading import assert_close\n"
            "from dlbook.grading.hints import hint_for\n"
            "answer = torch.zeros(1 << 26, dtype=torch.int8)\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "hint = hint_for(answer, {'a': torch.zeros(3), 'b': torch.ones(3)}, 'none')\n"
            "try:\n"
            "    assert_close(answer, torch.zeros(3, dtype=torch.float64), hint=hint)\n"
            "except AssertionError as err:\n"
            "    print(err)\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    message, grown_mb = out.stdout.strip().splitlines()
    assert "shape (67108864,), expected (3,)" in message
    assert int(grown_mb) < 64, f"the peak grew by {grown_mb} MiB"


def test_a_the_grading_child_has_a_memory_cap():
    """The grading child's address space is capped at what it holds plus a headroom: an allocation past it fails
    as a MemoryError in that test, never as the machine's OOM killer."""
    code = ("from dlbook.grading.worker import _cap_memory\n"
            "_cap_memory(256)\n"
            "try:\n"
            "    b = bytearray(1 << 30)\n"
            "    print('allocated')\n"
            "except MemoryError:\n"
            "    print('refused')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "refused", out.stderr


def test_a_text_from_a_submission_is_made_safe_and_csv_cells_are_not_formulas():
    """Surrogates and control characters become U+FFFD; Latin-1 names decode; formula starts get an apostrophe."""
    from dlbook.grading.batch import safe_text, spreadsheet_safe, student_name

    assert safe_text("a\ud800b\x00c") == "a\ufffdb\ufffdc"
    assert student_name(Path(os.fsdecode(b"Jos\xe9.ipynb"))) == "José"
    assert [spreadsheet_safe(s) for s in ("=1+1", "+1", "-1", "@SUM(A1)", "\t1", "ada")] == \
        ["'=1+1", "'+1", "'-1", "'@SUM(A1)", "'\t1", "ada"]


def test_a_unreadable_notebooks_say_why(tmp_path):
    """Too deep, too large, not UTF-8: each a one-line reason, never an exception."""
    from dlbook.grading import batch

    (tmp_path / "deep.ipynb").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "latin.ipynb").write_bytes(b'{"cells": ["\xe9"]}')
    assert "nested too deeply" in batch.validate_notebook(tmp_path / "deep.ipynb")
    assert batch.validate_notebook(tmp_path / "latin.ipynb") == "not a text file"
    with open(tmp_path / "huge.ipynb", "wb") as f:
        f.truncate(batch.MAX_NOTEBOOK_BYTES + 1)
    assert batch.validate_notebook(tmp_path / "huge.ipynb").startswith("larger than")


def test_c_the_seccomp_filter_denies_keyrings_and_namespaces_and_leaves_torch_working():
    """In a child process with the filter: keyctl, add_key and unshare fail with EPERM, clone3 with ENOSYS;
    threads, fork and a torch matmul on several threads still work."""
    if not (sys.platform.startswith("linux") and platform.machine() == "x86_64"):
        pytest.skip("the filter's table is tested on Linux x86_64")
    code = ("import ctypes, errno, os, threading, torch\n"
            "from dlbook.grading.seccomp import deny_syscalls\n"
            "deny_syscalls()\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "def err(nr, *a):\n"
            "    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(x) for x in a])\n"
            "    return errno.errorcode.get(ctypes.get_errno()) if r < 0 else 'ok'\n"
            "print(err(250, 1, 0), err(248, 0, 0, 0, 0, -3), err(272, 0x10000000), err(435, 0, 0))\n"
            "torch.set_num_threads(2)\n"
            "t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os._exit(7)\n"
            "print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), float((torch.ones(64, 64) @ torch.ones(64, 64)).sum()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["EPERM", "EPERM", "EPERM", "ENOSYS", "7", "262144.0"], out.stderr


def test_c_the_grading_process_gets_an_allowlisted_environment():
    from dlbook.grading.sandbox import scrubbed_environment

    env = scrubbed_environment({"PATH": "/bin", "LC_ALL": "C", "OMP_NUM_THREADS": "1", "GITHUB_TOKEN": "x",
                                "SSH_AUTH_SOCK": "/tmp/a", "AWS_SECRET_ACCESS_KEY": "y"})
    assert env == {"PATH": "/bin", "LC_ALL": "C", "OMP_NUM_THREADS": "1"}
    assert torch.ones(1).item() == 1.0


# ---------------------------------------------------------------------------------------------- Gradescope


def test_f_the_gradescope_autograder_grades_a_submission_laid_out_as_gradescope_does(tmp_path):
    """`dlbook-grade gradescope` writes a zip with setup.sh and run_autograder; run_autograder, run against a
    folder laid out as /autograder (source/, submission/, results/) and importing only the dlbook bundled in the
    zip, writes results.json: one visible test per question, the hidden test apart and `after_published`."""
    import zipfile

    from dlbook.grading.__main__ import main as cli_main

    archive = tmp_path / "autograder.zip"
    assert cli_main(["gradescope", str(EXERCISE), "--out", str(archive), "--timeout", "60",
                     "--extra-tests", str(FIXTURES / "hidden_tests.py")]) == 0
    root = tmp_path / "autograder"
    with zipfile.ZipFile(archive) as z:
        assert {"setup.sh", "run_autograder", "requirements.txt", "autograder.json"} <= set(z.namelist())
        assert z.getinfo("run_autograder").external_attr >> 16 == 0o755
        z.extractall(root / "source")
    (root / "submission").mkdir()
    (root / "submission" / "00_preliminaries.ipynb").write_bytes((FIXTURES / "correct.ipynb").read_bytes())
    env = dict(os.environ, DLBOOK_AUTOGRADER_ROOT=str(root), DLBOOK_PYTHON=sys.executable,
               PYTHONPATH=str(root / "source" / "dlbook" / "src"))
    proc = subprocess.run(["bash", str(root / "source" / "run_autograder")], env=env, capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((root / "results" / "results.json").read_text())
    tests = {t["name"]: t for t in results["tests"]}
    assert results["score"] == 15 and sorted(tests) == ["q1", "q2", "q2 (hidden tests)", "q3", "q4", "q5"]
    assert (tests["q1"]["score"], tests["q1"]["max_score"], tests["q1"]["visibility"]) == (3, 3, "visible")
    assert "PASS  2/2  sigmoid_grad_matches_autograd" in tests["q1"]["output"]
    hidden = tests["q2 (hidden tests)"]
    assert (hidden["score"], hidden["max_score"], hidden["visibility"]) == (1, 1, "after_published")
    assert "bce_is_stable_in_float32" not in tests["q2"]["output"]


# ---------------------------------------------------------------------------------------------- control groups


def test_e_a_control_group_takes_a_whole_process_tree_and_kills_it_whole():
    """A process that joins a submission's group brings all it forks; a child that left its process group and
    session (setsid) is still killed when the group is removed, and the group's limits are written."""
    from dlbook.grading.cgroups import Groups

    groups = Groups(tag=f"dlbook-test-{os.getpid()}")
    if not groups.available:
        pytest.skip(groups.how)
    try:
        procs = groups.make("0", 256 << 20, 16)
        pid = os.fork()
        if pid == 0:
            try:
                for path in procs:
                    with open(path, "w") as f:
                        f.write(str(os.getpid()))
                os.setsid()
                if os.fork() == 0:
                    os.setsid()
                    time.sleep(60)
                time.sleep(60)
            finally:
                os._exit(0)
        deadline = time.monotonic() + 30
        while len(groups.pids("0")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(groups.pids("0")) == 2
        if groups.version == 1:
            limit = Path(groups.bases["memory"], "0", "memory.limit_in_bytes").read_text()
            assert int(limit) == 256 << 20 and Path(groups.bases["pids"], "0", "pids.max").read_text().strip() == "16"
        groups.remove("0")
        assert groups.pids("0") == set()
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    finally:
        groups.close()


def test_e_without_root_or_a_delegated_subtree_the_fallback_is_stated(monkeypatch):
    """Not root and no writable cgroup v2 subtree: no group, and `how` says so (it lands in `isolation`)."""
    from dlbook.grading import cgroups

    monkeypatch.setattr(cgroups.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(cgroups.Groups, "_try_v2", lambda self: False)
    groups = cgroups.Groups()
    assert not groups.available and groups.make("0", 1 << 30, 16) == []
    assert groups.how.startswith("no cgroup (no writable cgroup v2 subtree")
