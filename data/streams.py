"""Streams every batch job shares: work run ahead on threads, and files appended one durable line at a time."""

from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def prefetched(items: Iterable[T], function: Callable[[T], R], workers: int, depth: int) -> Iterator[R]:
    """`map(function, items)` in order, run up to `depth` items ahead on `workers` threads.

    Decoding photos (Pillow releases the GIL) overlaps with inference this way.
    """
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="detcrop-read")
    pending: deque = deque()
    iterator = iter(items)
    try:
        for item in iterator:
            pending.append(pool.submit(function, item))
            if len(pending) >= depth:
                break
        while pending:
            result = pending.popleft().result()
            for item in iterator:
                pending.append(pool.submit(function, item))
                break
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of up to `size` consecutive items."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class JsonLinesWriter:
    """Appends lines one durable line at a time (flushed and fsynced); safe to reopen after a kill.

    A line a killed run left half-written is cut off before appending again.

    >>> with JsonLinesWriter("out/predictions.jsonl") as writer:  # doctest: +SKIP
    ...     writer.write_line('{"path": "a.jpg"}')
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_unfinished_tail()
        self._handle = open(self.path, "a", encoding="utf-8")

    def _drop_unfinished_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as handle:
            payload = handle.read()
            if payload.endswith(b"\n"):
                return
            keep = payload.rfind(b"\n") + 1
            logger.warning("%s: cutting an unfinished last line left by an interrupted run", self.path)
            handle.truncate(keep)

    def write_line(self, line: str) -> None:
        """`line` (no newline in it) and a newline, on disk before this returns."""
        self._handle.write(line + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "JsonLinesWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
