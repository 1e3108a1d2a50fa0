"""The grader's side of a submission: ``ns`` as a proxy whose every use is a request for data.

A test written as a function of ``ns`` runs unchanged in the grading process, which never executes submitted
code: ``ns.sigmoid`` asks the submission for the value of its global ``sigmoid``; data (tensors, numbers,
strings, lists, tuples, dicts) comes back as plain values, and anything else (a function, a class, an object)
as a :class:`RemoteObject` that can be called, or asked for an attribute, and nothing more. Calling sends the
arguments as data; tensors the learner's function changed in place, and generators it drew from, are updated
in the test's copies, so a test of "does not modify its input" or "reshuffles every epoch" means what it says.
"""

from __future__ import annotations

import socket
import time

import torch

from dlbook.grading import wire
from dlbook.grading.errors import NotAttempted, SubmissionGone, TestTimeout

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

    # The protocol ---------------------------------------------------------------------------------------------

    def _ask(self, header: dict, blobs: list = (), sent: list | None = None):
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
                _mirror(sent[index], wire.decode(encoded, got))
        return value

    def _handle(self, id_: int, type_name: str):
        return RemoteObject(self, id_, type_name)

    def _call(self, op: str, target: int | None, args, kwargs, name: str | None = None):
        blobs: list = []
        sent: list = []
        header = {"op": op, "args": wire.encode(list(args), blobs, out_tensors=sent),
                  "kwargs": wire.encode(dict(kwargs), blobs, out_tensors=sent)}
        if target is not None:
            header["id"] = target
        if name is not None:
            header["name"] = name
        return self._ask(header, blobs, sent)

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


def _mirror(local, remote) -> None:
    """Copy what the learner's function did to an argument into the test's own object."""
    try:
        if isinstance(local, torch.Generator) and isinstance(remote, torch.Generator):
            local.set_state(remote.get_state())
        elif isinstance(local, torch.Tensor) and isinstance(remote, torch.Tensor) and local.shape == remote.shape:
            with torch.no_grad():
                local.copy_(remote.to(local.dtype))
    except (RuntimeError, TypeError):
        pass


class RemoteObject(wire.Handle):
    """A learner's function, class or object, which stays in the submission's process."""

    __slots__ = ("_ns",)

    def __init__(self, ns: RemoteNamespace, id_: int, type_name: str):
        super().__init__(id_, type_name)
        self._ns = ns

    def __call__(self, *args, **kwargs):
        return self._ns._call("call", self._hid, args, kwargs)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._ns._ask({"op": "getattr", "id": self._hid, "name": name})

    def _probe(self, name: str, args: list):
        return self._ns._call("probe", None, args, {}, name=name)

    def __repr__(self) -> str:
        return f"<the submission's {self._htype}>"

    def __bool__(self) -> bool:
        return True
