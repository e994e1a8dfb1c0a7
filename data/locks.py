"""An exclusive lock on a folder a job writes into (a cropped dataset, a run folder).

Two `crop` jobs into one dataset would record every photo twice; two `train` runs into
one run folder would mix their files. `folder_lock` makes the second job fail at once with
a `FolderLockedError` naming the first (pid, host, start time, command).

The lock is `fcntl.flock` on `FOLDER/.detcrop.lock`: the kernel drops it when its holder
exits, however it exits, so a killed job never leaves a stale lock behind. The file itself
stays (hidden, ignored by every scan): removing it would let a third job lock a new file
while the second still holds the old one.

>>> with folder_lock("dataset", "crop"):  # doctest: +SKIP
...     crop_photos(...)
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from detcrop.data.errors import DetcropError
from detcrop.data.layout import LOCK_NAME

try:
    import fcntl
except ImportError:  # Windows: no flock; jobs run unguarded there
    fcntl = None

logger = logging.getLogger(__name__)


class FolderLockedError(DetcropError):
    """Another job holds the folder's lock; the message names it."""


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        port = f" serving port {holder['port']}" if "port" in holder else ""
        return (f"`{holder.get('job', 'a detcrop job')}` started {holder.get('started', '?')} by pid "
                f"{holder.get('pid', '?')} on {holder.get('host', '?')}{port}: {holder.get('command', '')}").rstrip(": ")
    except (ValueError, AttributeError):
        return "another detcrop job (no details recorded)"


@contextmanager
def folder_lock(folder: str | os.PathLike, job: str, port: int | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on `folder` (created if missing) for the `with` block; yields the lock file.

    `port`: the port a server holding the folder serves, named to a second one.

    Raises `FolderLockedError` at once, without waiting, when another job (in this process
    or any other on this machine) holds it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    if fcntl is None:
        logger.debug("no fcntl on this platform: %s is not locked", folder)
        yield path
        return
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 4096, 0).decode("utf-8", "replace")
            raise FolderLockedError(
                f"{folder} is in use by {_describe_holder(holder)}; wait for it to finish or pick another folder"
            ) from None
        details = {
            "job": job, "pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            **({"port": port} if port is not None else {}),
        }
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, (json.dumps(details) + "\n").encode("utf-8"), 0)
        try:
            yield path
        finally:
            os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)
