"""Store and forward: the on-disk outbox that keeps messages while the device is offline.

Messages are stored already encoded, with their seq, and delivered in seq order; a row is
deleted only after the broker acknowledged it (QoS 1 PUBACK), so an agent restart or a
power cut resends instead of losing. The outbox is bounded by bytes (sum of payload
sizes) and by age; when a bound is hit the *oldest* rows are dropped and counted, in
samples and in messages, and the counts survive restarts so they can be reported.

Samples measured but not yet batched are stashed here too, so a crash between two
publish intervals does not lose them.

:class:`SqliteOutbox` is the device implementation (SQLite in WAL mode);
:class:`MemoryOutbox` serves the simulator and tests that need no disk.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Queued:
    """One stored message."""

    seq: int
    topic: str
    payload: bytes
    ts: float


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds of the outbox."""

    max_bytes: int = 50 * 1024 * 1024
    max_age_s: float = 7 * 86400.0


class Outbox(Protocol):
    """What the daemon needs from a store-and-forward queue."""

    dropped_samples: int
    dropped_messages: int

    def put(
        self,
        seq: int,
        topic: str,
        payload: bytes,
        ts: float,
        samples: int = 0,
        *,
        clear_stash: bool = False,
    ) -> None:
        """Store a message (and, atomically, forget stashed samples it now carries)."""
        ...

    def after(self, seq: int, limit: int) -> list[Queued]:
        """Up to ``limit`` messages with a seq above ``seq``, in seq order."""
        ...

    def ack(self, seqs: list[int]) -> None:
        """Forget delivered messages."""
        ...

    def prune(self, now: float) -> None:
        """Drop messages older than the age bound."""
        ...

    def depth(self) -> int:
        """Number of messages waiting."""
        ...

    def size_bytes(self) -> int:
        """Sum of the waiting payloads' sizes."""
        ...

    def max_seq(self) -> int | None:
        """Highest stored seq (to never reuse one after a crash)."""
        ...

    def stash(self, payload: bytes) -> None:
        """Keep one encoded sample that is not yet in a batch."""
        ...

    def stashed(self) -> list[bytes]:
        """The stashed samples, oldest first."""
        ...

    def close(self) -> None:
        """Release the store."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    ts REAL NOT NULL,
    size INTEGER NOT NULL,
    samples INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_ts ON outbox (ts);
CREATE TABLE IF NOT EXISTS stash (id INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SqliteOutbox:
    """The outbox in a SQLite database (WAL mode; ``synchronous=FULL`` except stashing)."""

    def __init__(self, path: Path, limits: Limits | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or Limits()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._bytes = int(
            self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0]
        )
        counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        self.dropped_samples = int(counters.get("dropped_samples", 0))
        self.dropped_messages = int(counters.get("dropped_messages", 0))

    def _drop_where(self, where: str, params: tuple[object, ...]) -> None:
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size),0), COALESCE(SUM(samples),0) "
            f"FROM outbox WHERE {where}",
            params,
        ).fetchone()
        if not row[0]:
            return
        self._db.execute(f"DELETE FROM outbox WHERE {where}", params)
        self._bytes -= int(row[1])
        self._count_drops(int(row[2]), int(row[0]))

    def _count_drops(self, samples: int, messages: int) -> None:
        self.dropped_samples += samples
        self.dropped_messages += messages
        self._db.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            [
                ("dropped_samples", self.dropped_samples),
                ("dropped_messages", self.dropped_messages),
            ],
        )

    def put(
        self,
        seq: int,
        topic: str,
        payload: bytes,
        ts: float,
        samples: int = 0,
        *,
        clear_stash: bool = False,
    ) -> None:
        """Store a message, dropping the oldest rows first if the byte bound needs room."""
        size = len(payload)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if clear_stash:
                self._db.execute("DELETE FROM stash")
            if size > self.limits.max_bytes:
                self._count_drops(samples, 1)
                return
            excess = self._bytes + size - self.limits.max_bytes
            if excess > 0:
                # Oldest first: find the seq up to which the running size covers the excess.
                freed = 0
                cut = None
                for row_seq, row_size in self._db.execute(
                    "SELECT seq, size FROM outbox ORDER BY seq"
                ):
                    freed += row_size
                    cut = row_seq
                    if freed >= excess:
                        break
                if cut is not None:
                    self._drop_where("seq <= ?", (cut,))
            self._db.execute(
                "INSERT OR REPLACE INTO outbox (seq, topic, payload, ts, size, samples) "
                "VALUES (?,?,?,?,?,?)",
                (seq, topic, payload, ts, size, samples),
            )
            self._bytes += size

    def after(self, seq: int, limit: int) -> list[Queued]:
        """Messages with a higher seq, oldest first."""
        rows = self._db.execute(
            "SELECT seq, topic, payload, ts FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        ).fetchall()
        return [Queued(r[0], r[1], bytes(r[2]), r[3]) for r in rows]

    def ack(self, seqs: list[int]) -> None:
        """Delete delivered messages in one transaction (a lost ack only means a resend)."""
        if not seqs:
            return
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT COALESCE(SUM(size),0) FROM outbox "
                f"WHERE seq IN ({','.join('?' * len(seqs))})",
                seqs,
            ).fetchone()
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
            self._bytes -= int(row[0])

    def prune(self, now: float) -> None:
        """Drop (and count) messages older than ``max_age_s``."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._drop_where("ts < ?", (now - self.limits.max_age_s,))

    def depth(self) -> int:
        """Messages waiting."""
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def size_bytes(self) -> int:
        """Payload bytes waiting (what ``max_bytes`` bounds)."""
        return self._bytes

    def max_seq(self) -> int | None:
        """Highest stored seq."""
        value = self._db.execute("SELECT MAX(seq) FROM outbox").fetchone()[0]
        return int(value) if value is not None else None

    def stash(self, payload: bytes) -> None:
        """Keep one encoded sample until it is batched.

        Written without an fsync (``synchronous=NORMAL``): it survives an agent crash,
        and the next batch's ``synchronous=FULL`` commit makes it durable on disk. This
        spares the SD card an fsync per sample."""
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            self._db.execute("INSERT INTO stash (payload) VALUES (?)", (payload,))
        finally:
            self._db.execute("PRAGMA synchronous=FULL")

    def stashed(self) -> list[bytes]:
        """Stashed samples, oldest first."""
        return [bytes(r[0]) for r in self._db.execute("SELECT payload FROM stash ORDER BY id")]

    def close(self) -> None:
        """Checkpoint and close the database."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()


class MemoryOutbox:
    """The same outbox in memory (simulated devices; lost when the process exits)."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._rows: OrderedDict[int, tuple[Queued, int]] = OrderedDict()
        self._stash: list[bytes] = []
        self._bytes = 0
        self.dropped_samples = 0
        self.dropped_messages = 0

    def _drop_oldest(self) -> None:
        _, (q, samples) = self._rows.popitem(last=False)
        self._bytes -= len(q.payload)
        self.dropped_samples += samples
        self.dropped_messages += 1

    def put(
        self,
        seq: int,
        topic: str,
        payload: bytes,
        ts: float,
        samples: int = 0,
        *,
        clear_stash: bool = False,
    ) -> None:
        """Store a message, dropping the oldest first to stay within ``max_bytes``."""
        if clear_stash:
            self._stash.clear()
        if len(payload) > self.limits.max_bytes:
            self.dropped_samples += samples
            self.dropped_messages += 1
            return
        while self._rows and self._bytes + len(payload) > self.limits.max_bytes:
            self._drop_oldest()
        out_of_order = bool(self._rows) and seq < next(reversed(self._rows))
        self._rows[seq] = (Queued(seq, topic, payload, ts), samples)
        if out_of_order:
            self._rows = OrderedDict(sorted(self._rows.items()))
        self._bytes += len(payload)

    def after(self, seq: int, limit: int) -> list[Queued]:
        """Messages with a higher seq, oldest first."""
        out = []
        for s, (q, _) in self._rows.items():
            if s > seq:
                out.append(q)
                if len(out) >= limit:
                    break
        return out

    def ack(self, seqs: list[int]) -> None:
        """Forget delivered messages."""
        for s in seqs:
            item = self._rows.pop(s, None)
            if item is not None:
                self._bytes -= len(item[0].payload)

    def prune(self, now: float) -> None:
        """Drop messages older than ``max_age_s``."""
        while self._rows and next(iter(self._rows.values()))[0].ts < now - self.limits.max_age_s:
            self._drop_oldest()

    def depth(self) -> int:
        """Messages waiting."""
        return len(self._rows)

    def size_bytes(self) -> int:
        """Payload bytes waiting."""
        return self._bytes

    def max_seq(self) -> int | None:
        """Highest stored seq."""
        return next(reversed(self._rows)) if self._rows else None

    def stash(self, payload: bytes) -> None:
        """Keep one encoded sample until it is batched."""
        self._stash.append(payload)

    def stashed(self) -> list[bytes]:
        """Stashed samples, oldest first."""
        return list(self._stash)

    def close(self) -> None:
        """Nothing to release."""
