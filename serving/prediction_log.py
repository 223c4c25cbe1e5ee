"""Lossless prediction logging: a per-worker append-only spool shipped to Postgres in batches.

A request is answered only after its predictions are appended to this worker's spool with one
``os.write`` (in the OS page cache: safe from a worker crash or SIGKILL; ``FRAUD_SPOOL_FSYNC=1``
adds an ``fdatasync`` per request for safety from power loss too). A background thread ships
the spool to Postgres with :func:`fraud_lib.store.copy_predictions` (COPY, idempotent on
``prediction_id``), so Postgres being slow or down never touches the request path. The file
layout and line format are in :mod:`serving.spool`.

Recovery: a writer that dies (SIGKILL included) releases its flock. Every writer looks for
lock files it can flock at start and every few seconds; it then owns that dead writer's
segments, ships them from the recorded offset, deletes them and the lock. flock makes two live
writers never ship the same segment, and the idempotent insert makes a replay after a crash
between commit and offset write harmless. A trailing line without LF in a dead writer's last
segment is a write that was cut off, so never acknowledged: it is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fraud_lib import store
from fraud_lib.config import Settings, parse_flag
from fraud_lib.errors import DatabaseError, DataError
from serving.spool import (
    SEGMENT_NAME,
    Segments,
    count_records,
    decode_pieces,
    line_records,
    reencode,
    write_all,
)

log = logging.getLogger(__name__)

SEGMENT_BYTES = 16 * 1024 * 1024
ADOPT_EVERY_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 5.0


class LogUnavailable(Exception):
    """The spool cannot be written, so a prediction cannot be acknowledged."""


def spool_fsync_enabled() -> bool:
    """``FRAUD_SPOOL_FSYNC`` (1/true/yes/on; default off: page cache, which survives a worker
    crash but not a power loss)."""
    return parse_flag(os.environ.get("FRAUD_SPOOL_FSYNC", ""), "FRAUD_SPOOL_FSYNC")


class PredictionLog:
    """This worker's spool and its background shipper (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Any,
        engine_factory: Callable[[], Any],
        *,
        segment_bytes: int = SEGMENT_BYTES,
        fsync: bool | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine_factory = engine_factory
        self.dir = Path(settings.spool_dir)
        self.segment_bytes = segment_bytes
        self.fsync = spool_fsync_enabled() if fsync is None else fsync
        self.batch_size = max(1, settings.log_batch_size)
        self.flush_seconds = max(0.01, settings.log_flush_seconds)
        self.wid = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._deadline = float("inf")
        self._fd: int | None = None
        self._open_seq = 1
        self._open_size = 0
        self._appended = 0
        self._shipped = 0
        self._own: Segments | None = None
        self._orphans: list[Segments] = []
        self._thread: threading.Thread | None = None
        self.rows_written = 0
        self.db_up: bool | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_shipped_at: float | None = None
        self.spool_error: str | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Create this writer's lock and first segment, start the shipper (which adopts the
        segments of dead writers first)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.dir / f"{self.wid}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._own = Segments(self.dir, self.wid, lock_fd, own=True)
        self._fd = self._open_segment(1)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()
        log.info("prediction log %s in %s (fsync %s)", self.wid, self.dir, self.fsync)

    def close(self, timeout: float = 10.0) -> bool:
        """Stop accepting, ship what can be shipped within ``timeout`` s, release the files.
        Returns True if everything was shipped (the files are then removed); otherwise they
        stay for the next worker to adopt."""
        self._deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        drained = self._idle() and not (self._thread and self._thread.is_alive())
        for src in [*self._orphans, *([self._own] if self._own else [])]:
            if drained and src is self._own:
                src.remove_all()
            os.close(src.lock_fd)
        self._orphans, self._own = [], None
        if not drained:
            log.warning("prediction log %s closed with %d records not shipped; the next worker "
                        "will ship them", self.wid, self.backlog_records)  # fmt: skip
        return drained

    # ------------------------------------------------------------------ request path
    def _open_segment(self, seq: int) -> int:
        path = self._own.segment(seq) if self._own else self.dir / f"{self.wid}.{seq:06d}.spool"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if self.fsync:
            dir_fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self._open_seq, self._open_size = seq, 0
        return fd

    def append(self, data: bytes, records: int, *, wake: bool = True) -> bool:
        """Append encoded lines; returns once they are in the OS (fsynced if configured).
        Raises :class:`LogUnavailable` if they could not be written (nothing is kept then).

        Returns True when a full batch is waiting for the shipper: it is woken now, or with
        ``wake=False`` by the caller's :meth:`wake` once its own work is done (a request
        answered first, while the shipper's decoding would compete with it for the GIL)."""
        with self._lock:
            if self._fd is None:
                raise LogUnavailable("the prediction log is closed (the worker is shutting down)")
            try:
                write_all(self._fd, data)
                if self.fsync:
                    os.fdatasync(self._fd)
            except OSError as exc:
                with contextlib.suppress(OSError):  # drop a partial write: lines stay whole
                    os.ftruncate(self._fd, self._open_size)
                self.spool_error = f"cannot write the spool in {self.dir}: {exc}"
                raise LogUnavailable(self.spool_error) from exc
            self.spool_error = None
            self._open_size += len(data)
            self._appended += records
            if self._open_size >= self.segment_bytes:
                os.close(self._fd)
                self._fd = None
                self._fd = self._open_segment(self._open_seq + 1)
            full = self._appended - self._shipped >= self.batch_size
        self.metrics.spooled(records)  # never raises: the lines are in the spool
        if full and wake:
            self._wake.set()
        return full

    def wake(self) -> None:
        """Ask the shipper to ship now rather than at its next timed check."""
        self._wake.set()

    # ------------------------------------------------------------------ status
    @property
    def backlog_records(self) -> int:
        return self._appended - self._shipped + sum(o.records for o in list(self._orphans))

    def backlog_bytes(self) -> int:
        with self._lock:
            open_seq, open_size = self._open_seq, self._open_size
        total = self._own.pending_bytes(open_seq, open_size) if self._own else 0
        return total + sum(o.pending_bytes() for o in list(self._orphans))

    def _idle(self) -> bool:
        return self._appended == self._shipped and not self._orphans

    @property
    def healthy(self) -> bool:
        """The shipper thread runs and the last spool write worked (Postgres may be down)."""
        alive = self._thread is not None and self._thread.is_alive()
        return alive and self.spool_error is None

    def status(self) -> dict[str, Any]:
        """The log's state for clients (/readyz): whether and when things failed, not the
        errors themselves (paths, database URLs), which are in the server log and in
        :attr:`last_error` / :attr:`spool_error`."""
        return {
            "healthy": self.healthy,
            "writer_id": self.wid,
            "fsync": self.fsync,
            "backlog_records": self.backlog_records,
            "backlog_bytes": self.backlog_bytes(),
            "orphans_adopted": len(self._orphans),
            "rows_written": self.rows_written,
            "db_up": self.db_up,
            "last_error_at": self.last_error_at,
            "last_shipped_at": self.last_shipped_at,
            "spool_writable": self.spool_error is None,
        }

    # ------------------------------------------------------------------ shipper
    def _run(self) -> None:
        backoff = 0.0
        next_adopt = 0.0
        while True:
            stopping = self._stopping.is_set()
            if stopping and (self._idle() or time.monotonic() >= self._deadline):
                break
            if time.monotonic() >= next_adopt:
                with contextlib.suppress(OSError):
                    self._adopt_orphans()
                next_adopt = time.monotonic() + ADOPT_EVERY_SECONDS
            self._wake.clear()  # before looking: a wake from here on ends the wait below
            try:
                shipped = self._ship_once()
            except Exception as exc:
                self._failed(exc)
                backoff = min(max(backoff * 2, 0.2), MAX_BACKOFF_SECONDS)
                if stopping:
                    time.sleep(max(0.0, min(backoff, self._deadline - time.monotonic())))
                else:
                    self._stopping.wait(backoff)
                continue
            finally:
                self._update_gauges()
            backoff = 0.0
            if stopping:
                if shipped == 0 and not self._orphans:
                    break
            elif shipped < self.batch_size and not self._orphans:
                # less than a batch: let lines gather until a full batch wakes us or the flush
                # interval ends. Looping at once, a busy worker's shipper made one COPY and
                # commit per round trip of a few lines each (see README, Benchmarks).
                self._wake.wait(self.flush_seconds)

    def _failed(self, exc: Exception) -> None:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if not isinstance(exc, DatabaseError):
            log.exception("prediction log: unexpected error while shipping, will retry")
        elif self.db_up is not False:
            log.warning("prediction log: cannot ship to Postgres, will retry: %s", first)
        self.db_up = False
        self.last_error, self.last_error_at = f"{type(exc).__name__}: {first}", time.time()
        reason = "database" if isinstance(exc, DatabaseError) else "unexpected"
        self.metrics.log_write_errors.labels(reason).inc()

    def _update_gauges(self) -> None:
        with contextlib.suppress(Exception):
            self.metrics.log_backlog_records.set(self.backlog_records)
            self.metrics.log_backlog_bytes.set(self.backlog_bytes())
            self.metrics.log_db_up.set(1 if self.db_up else 0)

    def _ship_once(self) -> int:
        """Ship one batch from a dead writer's segments, else from ours; rows shipped."""
        with self._lock:
            open_seq, open_size = self._open_seq, self._open_size
        for src in [*self._orphans, self._own]:
            if src is None:
                continue
            lines, seq, offset = src.next_lines(self.batch_size, open_seq, open_size)
            if not lines:
                if src is not self._own:
                    self._finish_orphan(src)
                continue
            self._insert(lines, src)
            src.seq, src.offset = seq, offset
            src.save()
            records = sum(map(line_records, lines))
            if src is self._own:
                with self._lock:
                    self._shipped += records
            else:
                src.records = max(0, src.records - records)
            self.last_shipped_at = time.time()
            return records
        return 0

    def _insert(self, lines: list[bytes], src: Segments) -> None:
        """COPY ``lines`` in pieces of ``batch_size`` rows (a 10,000-row line too: the
        shipper never holds a whole block's tuples); the caller moves the offset only after
        the last piece is in, and a piece stored twice after a crash is skipped (idempotent
        on ``prediction_id``)."""
        engine = self.engine_factory()
        written, bad = 0, []
        for rows, unreadable in decode_pieces(lines, self.batch_size):
            bad += unreadable
            started = time.perf_counter()  # a piece is one transaction: visible at its commit
            written += self._insert_isolating(engine, rows, bad)
            self.metrics.log_copy_seconds.observe(time.perf_counter() - started)
        if bad:
            self._reject(bad, src)
        if self.db_up is not True:
            log.info("prediction log: shipping to Postgres")
        self.db_up = True
        self.rows_written += written
        self.metrics.log_rows_written.inc(written)

    def _insert_isolating(self, engine: Any, rows: list[tuple], bad: list[bytes]) -> int:
        """Insert ``rows``; if Postgres rejects the batch, bisect to find and set aside the
        rejected rows (re-inserting is harmless: the insert is idempotent)."""
        try:
            return store.copy_predictions(engine, rows)
        except DataError:
            if len(rows) == 1:
                bad.append(reencode(rows[0]))
                return 0
        half = len(rows) // 2
        return self._insert_isolating(engine, rows[:half], bad) + self._insert_isolating(
            engine, rows[half:], bad
        )

    def _reject(self, lines: list[bytes], src: Segments) -> None:
        rejected = self.dir / "rejected"
        rejected.mkdir(exist_ok=True)
        with open(rejected / f"{src.wid}.spool", "ab") as fh:
            fh.write(b"".join(line.rstrip(b"\n") + b"\n" for line in lines))
        records = sum(map(line_records, lines))
        self.metrics.log_write_errors.labels("rejected").inc(records)
        log.error(
            "prediction log: %d predictions could not be stored; kept in %s", records, rejected
        )

    # ------------------------------------------------------------------ orphans
    def _adopt_orphans(self) -> None:
        owned = {self.wid, *(o.wid for o in self._orphans)}
        wids = {p.stem for p in self.dir.glob("*.lock")}
        for p in self.dir.glob("*.spool"):
            if (m := SEGMENT_NAME.match(p.name)) and m["wid"] not in wids:
                wids.add(m["wid"])  # segments whose lock is gone: recreate it to adopt them
                with contextlib.suppress(OSError):
                    os.close(os.open(self.dir / f"{m['wid']}.lock", os.O_CREAT | os.O_RDWR, 0o644))
        for wid in sorted(wids - owned):
            path = self.dir / f"{wid}.lock"
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # Still the same file? (another writer may have finished and unlinked it.)
                if os.fstat(fd).st_ino != os.stat(path).st_ino:
                    raise FileNotFoundError(path)
            except OSError:
                os.close(fd)
                continue
            src = Segments(self.dir, wid, fd, own=False)
            src.records = count_records(src)
            self._orphans.append(src)
            log.info("prediction log: adopted %s of a dead worker (%d records to ship)",
                     wid, src.records)  # fmt: skip

    def _finish_orphan(self, src: Segments) -> None:
        if any(seq >= src.seq for seq in src.segments()):
            return  # not done yet (next_lines deletes each segment it has fully shipped)
        src.remove_all()
        os.close(src.lock_fd)
        self._orphans.remove(src)
        log.info("prediction log: finished shipping %s", src.wid)
