"""The data that crosses between the grader and a submission: values in, values out, never code.

A message is one frame on a stream socket::

    b"DLBK" | header length (4 bytes, big endian) | header: UTF-8 JSON | for each blob: length (8 bytes) | bytes

Values are encoded as tagged JSON (``encode``) and decoded (``decode``) into plain Python and torch objects
only: ``None``, ``bool``, ``int``, ``float``, ``str``, ``...``, lists, tuples, dicts, ``torch.Tensor`` (built
from raw bytes with :func:`torch.frombuffer`), ``numpy.ndarray``, ``torch.dtype``, ``torch.device`` and
``torch.Generator`` states. Nothing is unpickled and no object of the sender's choosing is ever
instantiated, so an answer cannot carry an ``__eq__``, ``__float__``, ``__array__`` or
``__torch_function__`` of its own. Anything else the submission holds travels as an opaque
``{"t": "handle"}``: a number the grader can only send back.

:func:`read_frame` enforces :data:`MAX_FRAME_BYTES` and :func:`decode` enforces :data:`MAX_DEPTH` and
:data:`MAX_ITEMS`; a violation raises :class:`WireError`, which fails the test that asked, not the grader.
"""

from __future__ import annotations

import json
import math
import socket
import struct

import numpy as np
import torch

__all__ = ["WireError", "MAX_FRAME_BYTES", "MAX_DEPTH", "MAX_ITEMS", "Handle", "encode", "decode", "send_frame",
           "read_frame", "DTYPES"]

MAGIC = b"DLBK"
MAX_FRAME_BYTES = 256 * 1024 * 1024  # one answer: 256 MiB of tensors at most
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 32
MAX_ITEMS = 200_000
MAX_BLOBS = 4096

DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128,
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)}
NP_DTYPES = {"float16", "float32", "float64", "complex64", "complex128", "uint8", "int8", "int16", "int32", "int64",
             "bool"}


class WireError(Exception):
    """A frame or value that breaks the protocol's rules (too big, too deep, malformed)."""


class Handle:
    """An object that stays in the submission's process, named by a number (``type_name`` is for messages)."""

    __slots__ = ("_hid", "_htype")

    def __init__(self, id: int, type_name: str = "object"):
        self._hid, self._htype = id, type_name

    def __repr__(self) -> str:
        return f"<{self._htype} in the submission>"


# ---------------------------------------------------------------------------------------------- values


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def encode(value, blobs: list, handles=None, depth: int = 0, out_tensors: list | None = None):
    """``value`` as tagged JSON; tensor bytes are appended to ``blobs``.

    Args:
        handles: a callable ``object -> Handle`` for values that are not data (the submission's side); when
            None, such a value raises TypeError (the grader's side sends data only).
        out_tensors: if given, every tensor and generator encoded is appended (so in-place changes can be
            reported, and a generator's draws mirrored back).
    """
    if depth > MAX_DEPTH:
        raise WireError(f"nested deeper than {MAX_DEPTH} levels")
    if value is None or type(value) is bool:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if value is Ellipsis:
        return {"t": "..."}
    if isinstance(value, Handle):
        return {"t": "handle", "id": value._hid}
    if isinstance(value, int):
        value = int(value)
        return value if abs(value) < 2**53 else {"t": "int", "v": str(value)}
    if isinstance(value, float):
        value = float(value)
        return value if math.isfinite(value) else {"t": "float", "v": repr(value)}
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        if dtype not in DTYPES:
            raise TypeError(f"tensors of dtype {dtype} cannot be sent")
        blobs.append(_tensor_bytes(value))
        if out_tensors is not None:
            out_tensors.append(value)
        return {"t": "tensor", "dtype": dtype, "shape": list(value.shape), "blob": len(blobs) - 1,
                "rg": bool(value.requires_grad)}
    if isinstance(value, np.ndarray) and str(value.dtype) in NP_DTYPES:
        blobs.append(np.ascontiguousarray(value).tobytes())
        return {"t": "ndarray", "dtype": str(value.dtype), "shape": list(value.shape), "blob": len(blobs) - 1}
    if isinstance(value, (np.integer, np.floating, np.bool_)) and type(value).__module__ == "numpy":
        return encode(value.item(), blobs, handles, depth, out_tensors)
    if isinstance(value, torch.dtype):
        return {"t": "dtype", "v": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"t": "device", "v": str(value)}
    if isinstance(value, torch.Generator):
        blobs.append(_tensor_bytes(value.get_state()))
        if out_tensors is not None:
            out_tensors.append(value)
        return {"t": "generator", "blob": len(blobs) - 1}
    if isinstance(value, (list, tuple)):
        items = [encode(v, blobs, handles, depth + 1, out_tensors) for v in value]
        return items if isinstance(value, list) else {"t": "tuple", "v": items}
    if isinstance(value, dict):
        return {"t": "dict", "v": [[encode(k, blobs, handles, depth + 1, out_tensors),
                                    encode(v, blobs, handles, depth + 1, out_tensors)] for k, v in value.items()]}
    if type(value) is slice:
        return {"t": "slice", "v": [encode(x, blobs, handles, depth + 1) for x in (value.start, value.stop, value.step)]}
    if handles is not None:
        return {"t": "handle", "id": handles(value)._hid, "type": type(value).__name__[:60]}
    fn = _function_name(value)
    if fn is not None:
        return {"t": "function", "v": fn}
    raise TypeError(f"{type(value).__name__} cannot be sent to the submission: send tensors, numbers, strings, "
                    f"lists, tuples, dicts, dtypes, devices, generators or torch/numpy/math functions")


def _function_name(value) -> str | None:
    """``module:qualname`` of a function of torch, numpy or math (resolved again on the other side), else None."""
    module, name = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if not callable(value) or not isinstance(module, str) or not isinstance(name, str) or "<" in name:
        return None
    if module.split(".")[0] not in ("torch", "numpy", "math"):
        return None
    return f"{module}:{name}"


class _Budget:
    def __init__(self):
        self.items = 0

    def tick(self):
        self.items += 1
        if self.items > MAX_ITEMS:
            raise WireError(f"more than {MAX_ITEMS} values in one answer")


def decode(obj, blobs: list, make_handle=None, functions: bool = False, tensors: list | None = None,
           depth: int = 0, budget: _Budget | None = None):
    """The plain value that ``obj`` (from :func:`encode`) describes; WireError if it breaks a rule.

    Args:
        make_handle: callable ``(id, type name) -> object`` for handles (the grader wraps them in a proxy, the
            submission's side looks up the object it made); when None a handle becomes a :class:`Handle`.
        functions: accept ``torch``/``numpy``/``math`` functions named by the grader (the submission's side).
        tensors: if given, every tensor and generator decoded is appended (in order).
    """
    budget = budget or _Budget()
    budget.tick()
    if depth > MAX_DEPTH:
        raise WireError(f"an answer nested deeper than {MAX_DEPTH} levels")
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if type(obj) is int or type(obj) is float:
        return obj
    if type(obj) is list:
        return [decode(v, blobs, make_handle, functions, tensors, depth + 1, budget) for v in obj]
    if type(obj) is not dict or not isinstance(obj.get("t"), str):
        raise WireError("malformed value")
    tag = obj["t"]
    try:
        if tag == "...":
            return ...
        if tag == "int":
            return int(obj["v"]) if isinstance(obj["v"], str) and len(obj["v"]) < 400 else _bad()
        if tag == "float":
            return float(obj["v"]) if obj["v"] in ("nan", "inf", "-inf") else _bad()
        if tag == "tuple":
            return tuple(decode(v, blobs, make_handle, functions, tensors, depth + 1, budget) for v in _list(obj["v"]))
        if tag == "dict":
            out = {}
            for pair in _list(obj["v"]):
                if type(pair) is not list or len(pair) != 2:
                    _bad()
                key = decode(pair[0], blobs, make_handle, functions, tensors, depth + 1, budget)
                if not isinstance(key, (str, int, float, bool, tuple)) and key is not None:
                    raise WireError("a dict key that is not a number, string or tuple")
                out[key] = decode(pair[1], blobs, make_handle, functions, tensors, depth + 1, budget)
            return out
        if tag == "slice":
            return slice(*(decode(v, blobs, None, False, None, depth + 1, budget) for v in _list(obj["v"])[:3]))
        if tag == "tensor":
            t = _tensor_from(obj, blobs, DTYPES)
            if obj.get("rg") is True and t.is_floating_point():
                t.requires_grad_(True)
            if tensors is not None:
                tensors.append(t)
            return t
        if tag == "ndarray":
            shape, blob = _shape(obj["shape"]), _blob(blobs, obj["blob"])
            if obj["dtype"] not in NP_DTYPES:
                _bad()
            dt = np.dtype(obj["dtype"])
            if len(blob) != dt.itemsize * math.prod(shape):
                raise WireError("an array whose bytes do not match its shape")
            return np.frombuffer(blob, dtype=dt).reshape(shape).copy()
        if tag == "dtype":
            return DTYPES[obj["v"]]
        if tag == "device":
            return torch.device(str(obj["v"])[:20])
        if tag == "generator":
            g = torch.Generator()
            g.set_state(torch.frombuffer(bytearray(_blob(blobs, obj["blob"])), dtype=torch.uint8))
            if tensors is not None:
                tensors.append(g)
            return g
        if tag == "handle":
            if type(obj["id"]) is not int:
                _bad()
            type_name = str(obj.get("type", "object"))[:60]
            return make_handle(obj["id"], type_name) if make_handle else Handle(obj["id"], type_name)
        if tag == "function" and functions:
            return _resolve_function(str(obj["v"]))
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as err:
        raise WireError(f"malformed {tag}: {type(err).__name__}") from None
    raise WireError(f"unknown value tag {tag[:20]!r}")


def _bad():
    raise WireError("malformed value")


def _list(v) -> list:
    if type(v) is not list:
        _bad()
    return v


def _shape(shape) -> list[int]:
    if type(shape) is not list or len(shape) > 16 or any(type(s) is not int or s < 0 for s in shape):
        raise WireError("a malformed shape")
    return shape


def _blob(blobs: list, index) -> bytes:
    if type(index) is not int or not 0 <= index < len(blobs):
        raise WireError("a reference to a missing blob")
    return blobs[index]


def _tensor_from(obj: dict, blobs: list, dtypes: dict) -> torch.Tensor:
    dtype = dtypes.get(obj["dtype"]) if isinstance(obj["dtype"], str) else None
    if dtype is None:
        raise WireError("a tensor of an unknown dtype")
    shape, blob = _shape(obj["shape"]), _blob(blobs, obj["blob"])
    size = torch.empty((), dtype=dtype).element_size()
    if len(blob) != size * math.prod(shape):
        raise WireError("a tensor whose bytes do not match its shape")
    if not blob:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(blob), dtype=dtype).reshape(shape)


def _resolve_function(text: str):
    import importlib

    module, _, qualname = text.partition(":")
    if module.split(".")[0] not in ("torch", "numpy", "math"):
        raise WireError("only torch, numpy and math functions can be sent")
    value = importlib.import_module(module)
    for part in qualname.split("."):
        value = getattr(value, part)
    return value


# ---------------------------------------------------------------------------------------------- frames


def send_frame(sock: socket.socket, header: dict, blobs: list = ()) -> None:
    """Write one message: a JSON header (``blobs`` is set to their count) and its blobs."""
    head = json.dumps(dict(header, blobs=len(blobs)), separators=(",", ":"), allow_nan=False).encode("utf-8")
    sock.sendall(MAGIC + struct.pack(">I", len(head)) + head)
    for blob in blobs:
        sock.sendall(struct.pack(">Q", len(blob)))
        sock.sendall(blob)


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("the other side closed the connection")
        got += k
    return bytes(buf)


def _discard(sock: socket.socket, n: int) -> None:
    buf = bytearray(1 << 20)
    while n > 0:
        k = sock.recv_into(buf, min(n, len(buf)))
        if k == 0:
            raise EOFError("the other side closed the connection")
        n -= k


def read_frame(sock: socket.socket, limit: int = MAX_FRAME_BYTES) -> tuple[dict, list]:
    """Read one message; WireError if it is malformed or over ``limit`` bytes (EOFError when the peer is gone)."""
    start = _read_exact(sock, 8)
    if start[:4] != MAGIC:
        raise WireError("a frame without the magic bytes")
    (head_len,) = struct.unpack(">I", start[4:])
    if head_len > MAX_HEADER_BYTES:
        raise WireError(f"a header of {head_len} bytes")
    try:
        header = json.loads(_read_exact(sock, head_len).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise WireError("a header that is not JSON") from None
    if type(header) is not dict:
        raise WireError("a header that is not an object")
    count = header.get("blobs", 0)
    if type(count) is not int or not 0 <= count <= MAX_BLOBS:
        raise WireError("a bad blob count")
    total, blobs, over = head_len, [], False
    for _ in range(count):
        (size,) = struct.unpack(">Q", _read_exact(sock, 8))
        total += size
        if total > limit or over:
            over = True
            _discard(sock, size)  # keep the stream in step, store nothing
            continue
        blobs.append(_read_exact(sock, size))
    if over:
        raise WireError(f"an answer of {total / (1 << 20):.0f} MiB, over the limit of {limit >> 20} MiB")
    return header, blobs
