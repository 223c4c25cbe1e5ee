"""The online feature state: each entity's recent events, in Redis, shared by every worker and replica.

Layout: one Redis string per entity key, ``<prefix>ev:<entity>:<key>``, holding fixed-size
little-endian records appended with ``APPEND`` (atomic, so concurrent workers never lose an
event): event time (float64 epoch seconds), an 8-byte hash of the transaction id (to drop a
retried request's duplicate on read) and one float64 per aggregated column. Reading a
transaction's history is one ``GET`` per entity; reading and appending is one MULTI/EXEC
transaction in one round trip (the ``GET`` runs before the ``APPEND``, so a transaction never
sees itself).

Expiry (bounded memory): a record older than the spec's longest window (plus the longest label
delay) before the newest event can no longer change any feature, except the newest of those old
records, which time since previous needs (also for a late, out-of-order event that arrives
after the trim: offline it sees that record as its previous one). When a read finds more than
one such record, a Lua script rewrites the key without them (keeping the newest old one), so
memory per entity is bounded by the events in its longest window.
Every key also carries a TTL of :data:`IDLE_TTL_FACTOR` horizons, so entities that stop
transacting disappear (after that their time since previous restarts at "no previous event").
A few-key append sets it every time; the batch script renews it only once it has fallen
:data:`TTL_RENEW_MARGIN` of a horizon below (for the raw schema ~9 hours): an idle key lives
1.99 to 2 horizons (wall clock) after its last append, and a key that a burst of batches
appends to gets one PEXPIRE, not one per batch (they were half of redis-server's time for a
batch of 10,000 rows).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import hiredis
import numpy as np
import redis

from fraud_lib.features.spec import BehaviorSpec

logger = logging.getLogger(__name__)

KEY_PREFIX = "fraudloop:"
IDLE_TTL_FACTOR = 2  # an idle entity's key lives this many horizons (wall clock)
TTL_RENEW_MARGIN = 0.01  # ... or down to this much of a horizon less (batch appends)

# KEYS[1]: the entity key; ARGV: cutoff time, record size. Keeps records with time >= cutoff
# and the newest record older than the cutoff; returns the number of records dropped.
_TRIM_LUA = """
local blob = redis.call('GET', KEYS[1])
if not blob then return 0 end
local cutoff = tonumber(ARGV[1])
local size = tonumber(ARGV[2])
local n = #blob / size
local latest, latest_t = nil, nil
for i = 0, n - 1 do
  local t = struct.unpack('<d', blob, i * size + 1)
  if t < cutoff and (latest_t == nil or t >= latest_t) then latest, latest_t = i, t end
end
local kept = {}
for i = 0, n - 1 do
  local t = struct.unpack('<d', blob, i * size + 1)
  if t >= cutoff or i == latest then kept[#kept + 1] = string.sub(blob, i * size + 1, (i + 1) * size) end
end
if #kept < n then
  local ttl = redis.call('PTTL', KEYS[1])
  redis.call('SET', KEYS[1], table.concat(kept))
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
end
return n - #kept
"""

# KEYS: entity keys; ARGV[1]: TTL in ms (0: none), ARGV[2]: renew the TTL of a key whose TTL is
# below this (ms; a new key has none), ARGV[i + 2]: bytes to append to KEYS[i].
# Returns each key's value before the appends (nil for a new key).
_READ_APPEND_LUA = """
local ttl = tonumber(ARGV[1])
local renew = tonumber(ARGV[2])
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('GET', key)
  local data = ARGV[i + 2]
  if #data > 0 then
    redis.call('APPEND', key, data)
    if ttl > 0 and redis.call('PTTL', key) < renew then redis.call('PEXPIRE', key, ttl) end
  end
end
return out
"""
# Up to this many keys a read-and-append is a MULTI/EXEC transaction, above it the Lua script:
# for two keys the script costs redis-server ~74 us against ~39, for 10,000 keys reading
# 30,000 replies to queued commands in Python costs more than the script.
FEW_KEYS = 16


def id_hash(transaction_id: str) -> int:
    """The 8-byte hash stored with each event (equal ids, equal hashes)."""
    return int.from_bytes(
        hashlib.blake2b(transaction_id.encode(), digest_size=8).digest(), "little"
    )


@dataclass(frozen=True)
class RecordLayout:
    """The binary record of one event for a spec: time, id hash, the aggregated columns."""

    columns: tuple[str, ...]

    @classmethod
    def for_spec(cls, spec: BehaviorSpec) -> RecordLayout:
        """Columns that some aggregate reads, in the spec's order."""
        return cls(tuple(dict.fromkeys(a.column for a in spec.aggregates)))

    @functools.cached_property
    def dtype(self) -> np.dtype:
        """Structured numpy dtype of a record (little-endian; built once: ~3 us a call)."""
        return np.dtype([("t", "<f8"), ("id", "<u8"), *((c, "<f8") for c in self.columns)])

    @property
    def width(self) -> int:
        """8-byte fields per record."""
        return len(self.dtype.names)

    def pack(self, times: np.ndarray, ids: np.ndarray, values: dict[str, np.ndarray]) -> np.ndarray:
        """Records for arrays of event times, id hashes and column values."""
        out = np.empty(len(times), dtype=self.dtype)
        out["t"], out["id"] = times, ids
        for c in self.columns:
            out[c] = values[c]
        return out

    def unpack(self, blob: bytes | None) -> np.ndarray:
        """Records of a stored blob, a retried transaction's duplicates dropped; empty for None."""
        if not blob:
            return np.empty(0, dtype=self.dtype)
        records = np.frombuffer(blob, dtype=self.dtype)
        if len(records) > 1:
            _, first = np.unique(records["id"], return_index=True)
            if len(first) < len(records):
                records = records[np.sort(first)]
        return records


def horizon_seconds(spec: BehaviorSpec) -> float:
    """How far back any feature of ``spec`` looks: longest window plus longest label delay."""
    windows = [a.window.seconds for a in spec.aggregates]
    windows += [r.window.seconds + (r.delay.seconds if r.delay else 0.0) for r in spec.label_risk]
    return max(windows, default=0.0)


class RedisEventStore:
    """Per-entity event histories of one spec in Redis (see the module docstring)."""

    def __init__(self, client, spec: BehaviorSpec, prefix: str = KEY_PREFIX) -> None:
        self.r = client
        self.spec = spec
        self.layout = RecordLayout.for_spec(spec)
        self.prefix = prefix
        self.horizon = horizon_seconds(spec)
        if self.horizon:
            self.ttl_ms = max(1, int(IDLE_TTL_FACTOR * self.horizon * 1000))
            self.renew_below_ms = int((IDLE_TTL_FACTOR - TTL_RENEW_MARGIN) * self.horizon * 1000)
        else:
            self.ttl_ms, self.renew_below_ms = None, 0
        self._trim = client.register_script(_TRIM_LUA)
        self._read_append = client.register_script(_READ_APPEND_LUA)
        self._local = threading.local()  # each thread's own connection for read_append_raw

    def key(self, entity: str, value: str) -> str:
        """Redis key of one entity value's history."""
        return f"{self.prefix}ev:{entity}:{value}"

    def read_append_raw(self, keys: Sequence[str], appends: Sequence[bytes | memoryview | None]
                        ) -> list[bytes | None]:  # fmt: skip
        """Stored blobs of ``keys``; then append ``appends[i]`` (None or empty: nothing) to
        ``keys[i]`` and renew its TTL. Up to :data:`FEW_KEYS` keys one MULTI/EXEC transaction,
        above one Lua script call: either is atomic, so the reads are one snapshot and see the
        state before the appends."""
        if not keys:
            return []
        if len(keys) > FEW_KEYS:
            data = [b"" if d is None else d for d in appends]
            command = ("EVALSHA", self._read_append.sha, len(keys), *keys,
                       self.ttl_ms or 0, self.renew_below_ms, *data)  # fmt: skip
            try:
                return self._transaction([command])
            except redis.exceptions.NoScriptError:  # a restarted or flushed server
                self.r.script_load(_READ_APPEND_LUA)
                return self._transaction([command])
        commands: list[tuple] = [("MULTI",)]
        gets = []
        for key, data in zip(keys, appends, strict=True):
            gets.append(len(commands) - 1)  # its reply's index in EXEC's
            commands.append(("GET", key))
            if data:
                commands.append(("APPEND", key, bytes(data)))
                if self.ttl_ms:
                    commands.append(("PEXPIRE", key, str(self.ttl_ms)))
        commands.append(("EXEC",))
        replies = self._transaction(commands)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return [replies[i] for i in gets]

    def _transaction(self, commands: list[tuple]) -> list:
        """The last reply of ``commands`` (EXEC's replies for MULTI ... EXEC), sent on this
        thread's connection in one write (packed by hiredis directly): without the client's
        pool, command dispatch and argument checks, ~25 % less client CPU for a few keys
        (``bench/bench_read_append.py``), half the packing time for 10,000 (~12 -> ~5 ms).
        When the connection was refused or dropped (a restarted server, an idle timeout) the
        commands go once more on a new one: an event appended twice is read once (a repeated
        id is dropped)."""
        try:
            return self._send(commands)
        except redis.ConnectionError:
            return self._send(commands)

    def _send(self, commands: list[tuple]) -> list:
        pool = self.r.connection_pool
        conn = getattr(self._local, "conn", None)
        if conn is None:  # the thread keeps it (the pool closes it with the client)
            conn = self._local.conn = pool.get_connection()
        try:
            conn.send_packed_command([b"".join(hiredis.pack_command(c) for c in commands)])
            return [conn.read_response() for _ in commands][-1]
        except Exception:  # its replies may be out of step with the commands: a new one next
            conn.disconnect()
            self._local.conn = None
            pool.release(conn)
            raise

    def read_append(
        self, keys: Sequence[str], records: Sequence[np.ndarray | None]
    ) -> list[np.ndarray]:
        """Histories of ``keys`` (see :meth:`RecordLayout.unpack`); then append ``records[i]``."""
        appends = [None if r is None else r.tobytes() for r in records]
        return [self.layout.unpack(b) for b in self.read_append_raw(keys, appends)]

    def read(self, keys: Sequence[str]) -> list[np.ndarray]:
        """Histories of ``keys`` (one round trip)."""
        return self.read_append(keys, [None] * len(keys))

    def trim(self, keys: Iterable[str], now: float) -> int:
        """Drop records of ``keys`` older than the horizon before ``now`` (event time), except
        the newest of them; returns the number of records dropped."""
        cutoff = repr(now - self.horizon)
        size = self.layout.dtype.itemsize
        pipe = self.r.pipeline(transaction=False)
        for k in dict.fromkeys(keys):
            self._trim(keys=[k], args=[cutoff, size], client=pipe)
        return int(sum(pipe.execute()))

    def expire(self, keys: Sequence[str], histories: Sequence[np.ndarray], now: float) -> int:
        """:meth:`trim` the keys whose given history holds more than one record past the
        horizon."""
        if not self.horizon:
            return 0
        cutoff = now - self.horizon
        stale = [k for k, h in zip(keys, histories, strict=True) if (h["t"] < cutoff).sum() > 1]
        return self.trim(stale, now) if stale else 0

    def clear(self) -> int:
        """Delete every history under this store's prefix; returns keys deleted."""
        n = 0
        for batch in _chunks(self.r.scan_iter(match=f"{self.prefix}ev:*", count=1000), 1000):
            n += self.r.delete(*batch)
        return n

    def load(self, entity: str, values: np.ndarray, records: np.ndarray) -> int:
        """Append ``records`` (already packed) to the histories of ``values`` (one per record),
        pipelined; used by the rebuild. Returns the number of keys written."""
        if not len(values):
            return 0
        order = np.argsort(values, kind="stable")
        values, records = values[order], records[order]
        bounds = np.flatnonzero(np.r_[True, values[1:] != values[:-1], True])
        pipe = self.r.pipeline(transaction=False)
        for n, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            k = self.key(entity, str(values[lo]))
            pipe.append(k, records[lo:hi].tobytes())
            if self.ttl_ms:
                pipe.pexpire(k, self.ttl_ms)
            if n % 2000 == 1999:
                pipe.execute()
        pipe.execute()
        return len(bounds) - 1


def _chunks(items: Iterable[str], size: int) -> Iterable[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
