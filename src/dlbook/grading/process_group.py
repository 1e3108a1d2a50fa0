"""Killing a process group: the sandboxed submissions and the grading process each lead their own."""

from __future__ import annotations

import os
import signal

__all__ = ["kill_group"]


def kill_group(pid: int) -> None:
    """SIGKILL every process of the group ``pid`` leads (gone already is fine)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
