"""Fault triggers driven by file-system events: wait until a process creates a file in a directory
tree, woken by Linux inotify (through libc) rather than by polling the tree.

The fault tests kill a job (or the store it writes to) "once it writes new data files"; the kernel
tells the test the moment the first one is created, so the fault lands at the same point of the job
however busy the machine is, and the test spends no CPU on the wait.
"""
from __future__ import annotations

import ctypes
import os
import select
import struct
import time
from pathlib import Path
from typing import Callable

IN_CREATE, IN_MOVED_TO, IN_ISDIR = 0x100, 0x80, 0x40000000
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then the name, NUL-padded to len)


class FileEvents:
    """Watches ``root`` and every directory below it, also those created while it watches.

    Open it before the process starts, then :meth:`wait_for` a file name; ``with`` closes the watch."""

    def __init__(self, root: Path):
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._dirs: dict[int, Path] = {}
        self._pending: list[Path] = []  # files found while adding a watch to a new directory
        self._watch_tree(Path(root), initial=True)

    def _watch(self, path: Path) -> None:
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), IN_CREATE | IN_MOVED_TO)
        if wd < 0:
            err = ctypes.get_errno()
            if err == 2:  # the directory is gone again (a writer's temporary directory)
                return
            raise OSError(err, f"inotify_add_watch {path} failed")
        self._dirs[wd] = path

    def _watch_tree(self, root: Path, initial: bool = False) -> None:
        """Watch ``root`` and the directories below it; files already in a directory created after the
        watch began were created during the wait (before its watch existed): they count as events."""
        self._watch(root)
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                self._watch(Path(dirpath) / d)
            if not initial:
                self._pending += [Path(dirpath) / f for f in filenames]

    def wait_for(self, wanted: Callable[[str], bool], alive: Callable[[], bool], timeout: float) -> Path | None:
        """The first file created under the root whose name ``wanted`` accepts; None when ``alive``
        says the process that should create it has ended, or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for path in self._pending:
                if wanted(path.name):
                    self._pending.clear()
                    return path
            self._pending.clear()
            left = deadline - time.monotonic()
            if left <= 0 or not alive():
                return None
            # The wait ends on an event; every second it checks that the process still runs.
            ready, _, _ = select.select([self._fd], [], [], min(left, 1.0))
            if ready:
                self._read_events()

    def _read_events(self) -> None:
        try:
            data = os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return
        offset = 0
        while offset < len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            parent = self._dirs.get(wd)
            if parent is None or not name:
                continue
            path = parent / os.fsdecode(name)
            if mask & IN_ISDIR:
                self._watch_tree(path)
            else:
                self._pending.append(path)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> "FileEvents":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
