"""Writes that survive a crash or a power loss: data and folder entries reach the disk (fsync) before
a rename makes them the current version, so a file or folder is either the old one or the new one,
never an empty or half-written one."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the entries of folder `path` (files created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root`, `root` included."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def write_aside(path: Path, text: str) -> Path:
    """A new, fsynced file beside `path` holding `text`. Its name is unique and created exclusively,
    so whatever sits at a fixed temporary name (a stale file, a FIFO) cannot block or garble it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step that a crash cannot leave half done."""
    os.replace(write_aside(path, text), path)
    fsync_dir(path.parent)
