"""A gunicorn worker whose event loop receives each request whole before a thread handles it.

gunicorn's ``gthread`` worker hands a connection to a thread as soon as its first bytes
arrive, and the thread then blocks reading the rest: eight clients sending their bodies
slowly held all 2 x 4 threads, and every other request waited (~19 s). Here the selector loop
of :class:`BufferedWorker` (a ``ThreadWorker`` subclass) reads every connection without
blocking into a buffer of its own until the request's framing says it is complete
(:mod:`serving.framing`), and only then submits it: a thread parses it from memory
(:class:`serving.request_body.BufferUnreader`), so a slow client never holds a thread.

Limits (from :class:`fraud_lib.config.Settings`):

- the head must arrive within ``FRAUD_READ_TIMEOUT_SECONDS`` of the connection (or of the
  request's first byte on a kept-alive one; an idle kept-alive connection closes after
  gunicorn's ``keepalive``); the body within that time again plus 1 s per
  :data:`MIN_BODY_RATE` bytes received. Past its deadline a request gets 408 and is closed.
- the bytes buffered by all connections of a worker stay under ``FRAUD_BUFFER_BYTES``: a
  request that would need more gets 503 (``Retry-After: 1``). A buffer grows only as bytes
  arrive, so announcing a large Content-Length costs nothing. gunicorn's
  ``worker_connections`` caps the connections.
- a chunked body over ``FRAUD_MAX_BODY_BYTES`` gets 413 as soon as a chunk size passes it; a
  Content-Length over it goes to the app at once (which answers 413), then the connection is
  closed. ``Expect: 100-continue`` is answered by the loop.

Pipelined requests are answered in order from the buffer. Errors written here, and gunicorn's
own refusals of malformed requests, use the service's JSON error body
(:mod:`serving.http_errors`). TLS and HTTP/2 are not supported (the service binds 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import time
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.http.parser import RequestParser
from gunicorn.workers.gthread import TConn, ThreadWorker

from serving import http_errors
from serving.framing import Framing, Verdict, scan
from serving.request_body import BufferUnreader

MIN_BODY_RATE = 64 * 1024  # bytes/s: each MIN_BODY_RATE bytes received add 1 s to the deadline
FIRST_BUFFER = 16 * 1024  # a connection's buffer to start with (doubles as bytes arrive)
LINGER_SECONDS = 2.0  # after an answer that closes: read and drop what the client still sends
REAP_EVERY = 0.1  # seconds between two looks at the deadlines
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class BufferedConn(TConn):
    """A connection and the bytes of its current request (``buf[:size]``)."""

    def __init__(self, cfg: Any, sock: socket.socket, client: Any, server: Any) -> None:
        super().__init__(cfg, sock, client, server)  # non-blocking
        self.initialized = True  # no TLS or HTTP/2 negotiation: TConn.init() does nothing
        self.buf = bytearray()
        self.size = 0
        self.framing = Framing()
        self.deadline = 0.0
        self.body_started = 0.0
        self.registered = False
        self.closed = False
        self.closing = False  # answered and half-closed: draining until the peer closes
        self.early = False  # handed over before its body was in: close after the answer
        self.sent_continue = False
        self.view: memoryview | None = None  # the body lent to the thread


class BufferedWorker(ThreadWorker):
    """gthread's worker with requests received whole by the event loop (see module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reading: dict[BufferedConn, None] = {}  # connections the loop reads (or drains)
        self.buffered = 0  # bytes held by all connections' buffers
        self.next_reap = 0.0
        cfg = self.cfg
        self.max_head = (
            cfg.limit_request_line + cfg.limit_request_fields * (cfg.limit_request_field_size + 2)
        ) + 8
        self.max_body = self.read_timeout = self.budget = 0

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        super().check_config(cfg, log)
        if cfg.is_ssl:
            raise RuntimeError("serving.buffered_worker does not do TLS: terminate it in front")

    def init_process(self) -> None:
        from fraud_lib.config import Settings  # light: no numpy, no flask

        settings = Settings.from_env()
        self.max_body = settings.max_body_bytes
        self.read_timeout = settings.read_timeout_seconds
        self.budget = settings.buffer_bytes
        util.write_error = http_errors.write_error  # gunicorn's 4xx pages as the JSON body
        super().init_process()  # runs the loop

    # ------------------------------------------------------------------ the loop's side
    def accept(self, listener: socket.socket) -> None:
        try:
            sock, addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = BufferedConn(self.cfg, sock, addr, listener.getsockname())
        self._wait_request(conn, time.monotonic() + self.read_timeout)
        self._readable(conn)  # the request often came with the connection

    def _wait_request(self, conn: BufferedConn, deadline: float) -> None:
        conn.framing, conn.deadline = Framing(), deadline
        conn.early = conn.sent_continue = False
        self._watch(conn)
        if conn.size:  # a pipelined request is (partly) in already
            self._advance(conn)

    def _watch(self, conn: BufferedConn) -> None:
        if not conn.registered:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._readable, conn))
            conn.registered = True
        self.reading[conn] = None

    def _unwatch(self, conn: BufferedConn) -> None:
        if conn.registered:
            with contextlib.suppress(KeyError, ValueError, OSError):  # a socket closed already
                self.poller.unregister(conn.sock)
            conn.registered = False
        self.reading.pop(conn, None)

    def _readable(self, conn: BufferedConn, _fileobj: Any = None) -> None:
        try:
            self._read(conn)
        except Exception:  # a bug here must cost one connection, not the worker's loop
            self.log.exception("error reading a request from %s", conn.client)
            self._close(conn)

    def _read(self, conn: BufferedConn) -> None:
        if conn.closing:
            self._drain(conn)
            return
        while conn in self.reading and not conn.closing:
            if conn.size == len(conn.buf) and not self._grow(conn):
                return
            try:
                with memoryview(conn.buf) as view, view[conn.size :] as room:
                    got = conn.sock.recv_into(room)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(conn)
                return
            if not got:
                self._peer_closed(conn)
                return
            if not conn.size:  # a request's first byte: its head is due in read_timeout
                conn.deadline = time.monotonic() + self.read_timeout
            conn.size += got
            self._advance(conn)

    def _grow(self, conn: BufferedConn) -> bool:
        """Room for more bytes in the buffer, within the worker's budget (else 503)."""
        want = max(FIRST_BUFFER, len(conn.buf))
        framing = conn.framing
        if framing.length is not None and framing.end > conn.size:
            want = min(want, framing.end - len(conn.buf))  # no more than the request
        if self.buffered + want > self.budget:
            message = (
                "the service is receiving more request bytes at once than FRAUD_BUFFER_BYTES "
                "allows; retry shortly"
            )
            self._answer(conn, http_errors.raw_error(503, message, "Retry-After: 1\r\n"))
            return False
        conn.buf += bytes(want)
        self.buffered += want
        return True

    def _advance(self, conn: BufferedConn) -> None:
        """Act on what the buffer holds: wait, hand the request to a thread, or answer."""
        framing = conn.framing
        had_head = framing.head_end >= 0
        verdict = scan(conn.buf, conn.size, framing, self.max_head, self.max_body)
        if verdict is Verdict.MORE:
            if not had_head and framing.head_end >= 0:
                conn.body_started = time.monotonic()
                if framing.expect_continue:
                    self._send_continue(conn)
            if framing.head_end >= 0:
                received = conn.size - framing.head_end
                conn.deadline = conn.body_started + self.read_timeout + received / MIN_BODY_RATE
        elif verdict is Verdict.TOO_LARGE:
            self._answer(
                conn, http_errors.raw_error(413, http_errors.body_too_large(self.max_body))
            )
        else:
            self._submit(conn, early=verdict is Verdict.HAND_OVER)

    def _send_continue(self, conn: BufferedConn) -> None:
        try:
            conn.sent_continue = conn.sock.send(CONTINUE) == len(CONTINUE)
        except OSError:
            conn.sent_continue = False

    def _submit(self, conn: BufferedConn, early: bool) -> None:
        """Lend the request to a thread: its head as bytes, its body as a view of the buffer."""
        self._unwatch(conn)
        framing = conn.framing
        conn.early = early
        head_end = framing.head_end if framing.head_end >= 0 else conn.size
        end = framing.end if not early else conn.size
        conn.view = memoryview(conn.buf)[head_end:end]
        conn.parser = RequestParser(self.cfg, [], conn.client)
        conn.parser.unreader = BufferUnreader(bytes(conn.buf[:head_end]), conn.view)
        conn.sock.setblocking(True)
        self.enqueue_req(conn)

    def finish_request(self, conn: BufferedConn, fs: Any) -> None:
        """The thread is done with the connection (called in the loop)."""
        try:
            keep = bool(fs.result()) if not fs.cancelled() else False
        except Exception:
            keep = False
        try:
            self._after_request(conn, keep)
        except OSError:  # the thread closed the socket (an error it answered)
            self._close(conn)

    def _after_request(self, conn: BufferedConn, keep: bool) -> None:
        if conn.view is not None:
            conn.view.release()
            conn.view = None
        conn.parser = None
        conn.sock.setblocking(False)
        if not keep or not self.alive or conn.early:
            self._answer(conn, b"")
            return
        rest = conn.size - conn.framing.end  # pipelined bytes behind the request
        buf = bytearray(max(FIRST_BUFFER, rest))
        buf[:rest] = conn.buf[conn.framing.end : conn.size]
        self.buffered += len(buf) - len(conn.buf)
        conn.buf, conn.size = buf, rest
        self._wait_request(conn, time.monotonic() + self.cfg.keepalive)

    def _peer_closed(self, conn: BufferedConn) -> None:
        if not conn.size:
            self._close(conn)
            return
        message = "the connection was closed before the request was complete"
        self._answer(conn, http_errors.raw_error(400, message))

    def _answer(self, conn: BufferedConn, response: bytes) -> None:
        """Send ``response`` (if it fits the socket buffer), half-close, and drain the
        connection for up to :data:`LINGER_SECONDS` so the peer reads it before the close."""
        try:
            if response:
                conn.sock.send(response)
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.closing = True
        conn.deadline = time.monotonic() + LINGER_SECONDS
        self._watch(conn)

    def _drain(self, conn: BufferedConn) -> None:
        try:
            while conn.sock.recv(65536):
                pass
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._close(conn)

    def _close(self, conn: BufferedConn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._unwatch(conn)
        self.buffered -= len(conn.buf)
        conn.buf, conn.size = bytearray(), 0
        self.nr_conns -= 1
        util.close(conn.sock)

    def murder_pending(self) -> None:
        """Deadlines: 408 to a request past its own, close idle and lingering connections
        (idle ones at once when shutting down). Called by the loop after every wake-up."""
        now = time.monotonic()
        if now < self.next_reap and self.alive:
            return
        self.next_reap = now + REAP_EVERY
        for conn in list(self.reading):
            idle = not conn.size and not conn.closing
            if idle and not self.alive:
                self._close(conn)
            elif conn.deadline > now:
                continue
            elif conn.closing or idle:
                self._close(conn)
            else:
                message = (
                    f"the request did not arrive in time (FRAUD_READ_TIMEOUT_SECONDS="
                    f"{self.read_timeout:g}, then at least {MIN_BODY_RATE} bytes/s)"
                )
                self._answer(conn, http_errors.raw_error(408, message))

    # ------------------------------------------------------------------ the thread's side
    def handle_request(self, req: Any, conn: BufferedConn) -> bool:
        """gthread's request handling, with a send timeout, the 100 Continue already sent by
        the loop not sent again, and no keep-alive after a request handed over early (its
        answer says ``Connection: close``: a client must not send another request on it)."""
        if conn.sent_continue:
            req._expected_100_continue = False
        if conn.early:
            req.must_close = True
        conn.sock.settimeout(self.read_timeout)  # a client that reads nothing frees the thread
        keep = super().handle_request(req, conn)
        return bool(keep) and not conn.early
