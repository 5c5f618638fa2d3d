"""Send a run's records to the tracking store on a background thread, in order, retrying: the
training loop never waits for the store.

:class:`Sender` is one worker thread and a bounded first-in-first-out queue of :class:`Job`\\ s
(metrics of an epoch, a sample grid, a checkpoint, tags...). The loop hands a job over and goes
on; the worker sends jobs one at a time in the order given. When the store does not answer, the
worker retries the job at the head of the queue with exponential backoff (0.5 s doubling to 10 s)
and the jobs behind it wait their turn, so the store receives everything in the order it
happened once it is back. A job remembers which of its steps went through, so a retry repeats
only the step that failed and nothing is logged twice.

At the end of a run :meth:`Sender.close` waits a bounded time for the queue to empty; what is
still unsent is written to the run's local folder (:class:`Spool`) as one line per job in a
manifest, with the files the jobs refer to beside it. ``facegan sync RUN_ID`` (and the next
``train --resume`` or ``evaluate --run`` of that run) sends it from there
(:func:`facegan.tracking.sync_unsent`). Jobs whose files are large (checkpoints, grids, resume
states) keep them in the spool folder from the moment they are queued, so a crash of the whole
process loses at most the in-memory metrics of an outage, never a checkpoint.

No MLflow here: the jobs are built by :mod:`facegan.tracking`, which says which errors are
worth retrying.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from facegan.common import atomic_write, error_text

MANIFEST = "unsent.jsonl"
DEFAULT_QUEUE_SIZE = 100_000  # jobs; a job holds a few numbers or a path, not image data
BACKOFF_START_S, BACKOFF_MAX_S = 0.5, 10.0


class Job(Protocol):
    """One record to send. ``send`` may be called again after it raised: it must then do only what
    did not go through before. ``to_json`` describes what is left, for the manifest."""

    what: str  # for people: "metrics of epoch 12", "checkpoint generator-epoch-0040"

    def send(self) -> None: ...
    def to_json(self) -> dict: ...
    # optional: def absorb(self, other: Job) -> bool -- take ``other`` in (sent as one request)


class Spool:
    """The run's local folder for what has not reached the store (``facegan-unsent-<run>/``)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, name: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder / name

    @property
    def manifest(self) -> Path:
        return self.folder / MANIFEST

    def pending(self) -> list[dict]:
        """The manifest's jobs, in order (none when there is no folder)."""
        if not self.manifest.is_file():
            return []
        return [json.loads(line) for line in self.manifest.read_text().splitlines() if line.strip()]

    def write_manifest(self, jobs: list[dict]) -> None:
        """Replace the manifest with ``jobs`` (whole or absent: a temp file renamed over it)."""
        if not jobs:
            self.manifest.unlink(missing_ok=True)
            self.remove_if_empty()
            return
        text = "".join(json.dumps(job) + "\n" for job in jobs).encode()
        atomic_write(self.manifest, lambda f: f.write(text))

    def remove_if_empty(self) -> None:
        try:
            self.folder.rmdir()
        except OSError:
            pass  # absent, or still holds something


class Sender:
    """A background sender for one run (see the module docstring).

    Args:
        is_transient: whether an error may go away on retry (the store is away, a timeout); other
            errors (the store refused the request) are reported once and the job is kept locally.
        spool: where what cannot be sent is kept.
        warn: prints one line for the user.
        queue_size: jobs held at most; ``submit`` waits when full (memory stays bounded).
    """

    def __init__(self, *, is_transient: Callable[[BaseException], bool], spool: Spool,
                 warn: Callable[[str], None] | None = None, queue_size: int = DEFAULT_QUEUE_SIZE):
        self.is_transient, self.spool = is_transient, spool
        self.warn = warn or (lambda line: print(f"warning: {line}", file=sys.stderr))
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self._kept: list[Job] = []  # refused by the store: kept locally
        self._head: Job | None = None
        self._stop = threading.Event()  # give up retrying (close's deadline passed)
        self._outage_since: float | None = None
        self._thread = threading.Thread(target=self._work, name="facegan-sender", daemon=True)
        self._thread.start()

    # -- the loop's side ------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue ``job``; returns at once unless the queue is full."""
        if self._stop.is_set():
            raise RuntimeError("the sender is closed")
        self._queue.put(job)

    @property
    def outage(self) -> bool:
        return self._outage_since is not None

    def wait_until_sent(self, timeout: float | None = None) -> bool:
        """Block until every queued job was sent (True) or ``timeout`` seconds passed (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self, timeout: float) -> list[Job]:
        """Wait up to ``timeout`` seconds for everything to go out, then stop; write what is left to
        the spool's manifest and return it (empty: all sent)."""
        self.wait_until_sent(timeout)
        self._stop.set()
        self._queue.put(None)  # wakes the worker if it waits for work
        self._thread.join()
        left = list(self._kept)
        if self._head is not None:
            left.append(self._head)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                left.append(job)
        # After anything an earlier process left unsent: the manifest stays in order.
        self.spool.write_manifest(self.spool.pending() + [job.to_json() for job in left])
        return left

    # -- the worker -----------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            merged = 0
            try:
                if job is None:
                    return
                merged = self._absorb_followers(job)
                self._head = job
                if not self._send(job):
                    return  # closing while the store is away: close() collects the job
                self._head = None
            finally:
                for _ in range(1 + merged):
                    self._queue.task_done()

    def _absorb_followers(self, job: Job) -> int:
        """Merge the jobs queued right behind ``job`` that it can take in (``job.absorb(other)``:
        the metrics of many epochs in one request after an outage); returns how many."""
        absorb = getattr(job, "absorb", None)
        merged = 0
        while absorb is not None:
            with self._queue.mutex:  # this thread is the only consumer: the head stays the head
                follower = self._queue.queue[0] if self._queue.queue else None
            if follower is None or not absorb(follower):
                break
            self._queue.get_nowait()
            merged += 1
        return merged

    def _send(self, job: Job) -> bool:
        """Send ``job``, retrying while the store is away; False when closing stopped the retries."""
        delay = BACKOFF_START_S
        while True:
            try:
                job.send()
            except Exception as error:  # whatever the store raised: keep the job, never the loop's problem
                if not self.is_transient(error):
                    self.warn(f"the tracking store refused {job.what} ({error_text(error)}); kept in "
                              f"{self.spool.folder}/ for `facegan sync`")
                    self._kept.append(job)
                    return True
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    self.warn(f"the tracking store does not answer ({error_text(error)}); training goes on "
                              "and what it logs is sent when the store is back")
                if self._stop.wait(delay):
                    return False
                delay = min(2 * delay, BACKOFF_MAX_S)
                continue
            if self._outage_since is not None:
                self.warn(f"the tracking store is back after {time.monotonic() - self._outage_since:.0f} s; "
                          f"sending the {self._queue.qsize() + 1} records queued meanwhile")
                self._outage_since = None
            return True

