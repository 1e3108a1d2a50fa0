"""The grader's side of a submission: ``ns`` as a proxy whose every use is a request for data.

A test written as a function of ``ns`` runs unchanged in the grading process, which never executes submitted
code: ``ns.sigmoid`` asks the submission for the value of its global ``sigmoid``; data (tensors, numbers,
strings, lists, tuples, dicts) comes back as plain values, and anything else (a function, a class, an object)
as a :class:`RemoteObject` that can be called, or asked for an attribute, and nothing more. Calling sends the
arguments as data, which the submission decodes into fresh tensors: a tensor the learner's function changes in
place is never written back into the test's (its expected values stay pristine); the change is recorded instead
(:func:`dlbook.grading.inputs.changed_inputs`). A generator it drew from is updated in the test's copy, so a test
of "reshuffles every epoch" means what it says.
"""

from __future__ import annotations

import socket
import time

import torch

from dlbook.grading import wire
from dlbook.grading.errors import NotAttempted, SubmissionGone, TestTimeout
from dlbook.grading.inputs import describe_change

__all__ = ["Channel", "RemoteNamespace", "RemoteObject", "RemoteError", "GRACE_S"]

GRACE_S = 2.0  # the grader's own alarm fires this long after a test's timeout (the submission's fires first)


class RemoteError(Exception):
    """Raised in a test when the learner's code raised; its class name is that of the learner's exception."""


_KNOWN = {"NotImplementedError": NotImplementedError, "AssertionError": AssertionError}
_MADE: dict[str, type] = {}


def _exception_class(name: str) -> type:
    if name in _KNOWN:
        return _KNOWN[name]
    if name == "NotAttempted":
        return NotAttempted
    if not name.isidentifier():
        name = "Exception"
    if name not in _MADE:
        _MADE[name] = type(name, (RemoteError,), {"__module__": "submission"})
    return _MADE[name]


class Channel:
    """Requests to one submission over a socket; after a broken exchange every request raises SubmissionGone."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.broken: str | None = None

    def request(self, header: dict, blobs: list = ()) -> tuple[dict, list]:
        if self.broken:
            raise SubmissionGone(self.broken)
        done = False
        try:
            wire.send_frame(self.sock, header, blobs)
            answer = wire.read_frame(self.sock)
            done = True
            return answer
        except wire.WireError as err:
            if "magic" in str(err) or "blob count" in str(err):
                self.broken = f"its answers broke the protocol ({err})"
            done = True
            raise
        except (EOFError, OSError) as err:
            done = True
            self.broken = f"the submission stopped ({type(err).__name__})"
            raise SubmissionGone(self.broken) from None
        finally:
            if not done:  # interrupted halfway (the grader's own alarm): the stream is out of step
                self.broken = "the submission stopped answering"

    def hello(self) -> str:
        header, _ = self.request_first()
        return str(header.get("hello", "unknown"))[:300]

    def request_first(self) -> tuple[dict, list]:
        try:
            return wire.read_frame(self.sock)
        except (EOFError, OSError, wire.WireError) as err:
            self.broken = f"the submission did not start ({type(err).__name__})"
            raise SubmissionGone(self.broken) from None


class RemoteNamespace:
    """``ns`` for one test: attribute reads are requests, with the test's deadline."""

    def __init__(self, channel: Channel, timeout: float, seed: int = 0):
        self._channel = channel
        self._deadline = time.monotonic() + timeout
        self._seed = seed
        self._begun = False
        self._changes: list[str] = []  # what learner calls changed in place (dlbook.grading.inputs)

    # The protocol ---------------------------------------------------------------------------------------------

    def _ask(self, header: dict, blobs: list = (), sent: list | None = None, labels: list | None = None,
             label: str = "the function"):
        if not self._begun:
            self._begun = True
            self._channel.request({"op": "begin", "seed": self._seed})
        header = dict(header, seconds=max(0.01, self._deadline - time.monotonic()))
        answer, got = self._channel.request(header, list(blobs))
        if sum(key in answer for key in ("value", "missing", "raised", "unsendable", "timeout")) != 1:
            raise wire.WireError("a malformed answer (not exactly one of value, missing, raised, unsendable, "
                                 "timeout)")
        if answer.get("timeout"):
            raise TestTimeout()
        if "raised" in answer:
            raise _exception_class(str(answer["raised"]))(str(answer.get("message", ""))[:2000])
        if "unsendable" in answer:
            raise AssertionError(f"your result cannot be graded: {str(answer['unsendable'])[:300]}")
        if answer.get("missing"):
            return _MISSING
        value = wire.decode(answer.get("value"), got, make_handle=self._handle)
        for index, encoded in answer.get("mutated", []) if sent else []:
            if type(index) is int and 0 <= index < len(sent):
                if isinstance(sent[index], torch.Generator):
                    _mirror(sent[index], wire.decode(encoded, got))
                else:  # never written back: recorded as a finding
                    change = describe_change(label, labels[index] if labels else f"{index + 1}")
                    if change not in self._changes:
                        self._changes.append(change)
        if isinstance(value, RemoteObject):
            op = header.get("op")
            value._label = str(header.get("name")) if op == "get" else label if op == "getattr" else f"{label}(...)"
        return value

    def _handle(self, id_: int, type_name: str):
        return RemoteObject(self, id_, type_name)

    def _call(self, op: str, target: int | None, args, kwargs, name: str | None = None,
              label: str = "the function"):
        blobs: list = []
        sent: list = []
        header = {"op": op, "args": wire.encode(list(args), blobs, out_tensors=sent),
                  "kwargs": wire.encode(dict(kwargs), blobs, out_tensors=sent)}
        if target is not None:
            header["id"] = target
        if name is not None:
            header["name"] = name
        return self._ask(header, blobs, sent, _argument_labels(sent, args, kwargs), label)

    def _end(self) -> None:
        if self._begun and not self._channel.broken:
            self._channel.request({"op": "end"})

    # What a test sees ----------------------------------------------------------------------------------------

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = self._ask({"op": "get", "name": name})
        if value is _MISSING:
            raise NotAttempted(f"`{name}` is not defined (did you run its cell?)")
        if value is Ellipsis:
            raise NotAttempted(f"`{name}` is still `...`")
        return value

    def __contains__(self, name: str) -> bool:
        answer, _ = self._channel.request({"op": "has", "name": name})
        return answer.get("has") is True

    def __repr__(self) -> str:
        return "<the submission's namespace>"


_MISSING = object()


def _argument_labels(sent: list, args, kwargs) -> list[str]:
    """For each tensor sent, the argument it came in: "2" (the second positional one) or "`name`"."""
    owners: dict[int, str] = {}

    def walk(value, label, depth=0):
        if depth > 20:
            return
        owners.setdefault(id(value), label)
        if isinstance(value, (list, tuple)):
            for v in value:
                walk(v, label, depth + 1)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v, label, depth + 1)

    for i, a in enumerate(args):
        walk(a, f"{i + 1}")
    for k, v in kwargs.items():
        walk(v, f"`{k}`")
    return [owners.get(id(t), "?") for t in sent]


def _mirror(local, remote) -> None:
    """Advance the test's generator to where the learner's function left its copy (tensors are never mirrored)."""
    try:
        if isinstance(local, torch.Generator) and isinstance(remote, torch.Generator):
            local.set_state(remote.get_state())
    except (RuntimeError, TypeError):
        pass


class RemoteObject(wire.Handle):
    """A learner's function, class or object, which stays in the submission's process."""

    __slots__ = ("_ns", "_label")

    def __init__(self, ns: RemoteNamespace, id_: int, type_name: str):
        super().__init__(id_, type_name)
        self._ns = ns
        self._label = type_name

    def __call__(self, *args, **kwargs):
        return self._ns._call("call", self._hid, args, kwargs, label=self._label)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._ns._ask({"op": "getattr", "id": self._hid, "name": name}, label=f"{self._label}.{name}")

    def _probe(self, name: str, args: list):
        return self._ns._call("probe", None, args, {}, name=name, label=self._label)

    def __repr__(self) -> str:
        return f"<the submission's {self._htype}>"

    def __bool__(self) -> bool:
        return True
