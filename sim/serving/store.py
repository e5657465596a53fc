"""The serving store: UBT snapshots as the online scorer reads them, and the behaviors that arrived since.

What one snapshot (UBT(S), the index the nightly run for date S committed) holds, per its export
(:mod:`sim.serving.export`):

- per (user, category): the category's newest behaviors of the long window (``ts``, ``item_id``),
  at most ``caps.hard_k`` of them (hard search never reads more, SIM section 4 truncates the
  category's sub-sequence to K), and ``last_ts``, the newest behavior of the key;
- per user: the newest behaviors across categories (``ts``, ``item_id``, ``category_id``, as many as
  the short and long sequences can need), ``ubt_count`` (the uncapped number of the user's behaviors
  in the window) and ``first_day_ts``, the times of the user's behaviors on the window's first day
  (they leave the long window during day S + 1, so the exact long length at t needs them).

Behaviors after the snapshot reach the store through :meth:`SnapshotStore.append` (an endpoint) or
:meth:`SnapshotStore.load_day` (a micro-batch replacing one date); a request at t reads those before t.

Snapshot switch. An export writes a new generation of rows under its own id, then, in one
transaction, marks it complete and points ``current`` at it; a reader reads the pointer and the rows
inside one read transaction (WAL mode: a consistent view of the file while a writer works), so no
request mixes two snapshots, and requests keep being served while a snapshot is exported. The two
newest snapshot dates are kept (a request of day D reads UBT(D-1) also after UBT(D) was switched in).

The default store is embedded: one SQLite file, no server (:class:`SqliteStore`). The interface is
:class:`SnapshotStore`; :mod:`sim.serving.redis_store` implements it on a Redis/Valkey server, and
:func:`open_store` picks one from ``--store`` (a file path, or ``redis://HOST:PORT/DB``).
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

KEEP_SNAPSHOT_DATES = 2
SECONDS_PER_DAY = 86400


class StoreUnavailable(RuntimeError):
    """The store cannot be read (missing, unreadable, or holding no snapshot); the message names it and
    says what to run."""


class SnapshotNotServable(RuntimeError):
    """The store has no snapshot a request at this time may read (only newer ones: they hold its future)."""


@dataclass(frozen=True)
class UserRecord:
    """A user's short-term window inputs in a snapshot (newest first, aligned arrays)."""
    r_ts: np.ndarray
    r_items: np.ndarray
    r_cats: np.ndarray
    ubt_count: int
    first_day_ts: np.ndarray


@dataclass(frozen=True)
class CategoryRecord:
    """A (user, category) key of a snapshot: its newest behaviors (newest first) and newest time."""
    ts: np.ndarray
    items: np.ndarray
    last_ts: int


@dataclass(frozen=True)
class SnapshotInfo:
    generation: int
    date: str  # S: the snapshot is UBT(S), for the requests of S + 1
    meta: dict  # what the export recorded: the settings the rows were built with, the UBT version read


@dataclass(frozen=True)
class DayBehaviors:
    """Behaviors after a snapshot, aligned arrays in no particular order."""
    ts: np.ndarray
    items: np.ndarray
    cats: np.ndarray

    @staticmethod
    def empty() -> "DayBehaviors":
        z = np.zeros(0, dtype=np.int64)
        return DayBehaviors(z, z, z)


def _blob(a) -> bytes:
    return np.asarray(a, dtype="<i8").tobytes()


def _array(b: bytes | None) -> np.ndarray:
    return np.frombuffer(b, dtype="<i8").astype(np.int64) if b else np.zeros(0, dtype=np.int64)


def _date_of(ts: int) -> str:
    import datetime as _dt
    return (_dt.date(1970, 1, 1) + _dt.timedelta(days=int(ts) // SECONDS_PER_DAY)).isoformat()


class SnapshotView(ABC):
    """One consistent read of a snapshot and the behaviors after it (valid inside :meth:`SnapshotStore.view`)."""
    info: SnapshotInfo

    @abstractmethod
    def user(self, user_id: int) -> UserRecord | None: ...

    @abstractmethod
    def categories(self, user_id: int, category_ids: Sequence[int]) -> dict[int, CategoryRecord]: ...

    @abstractmethod
    def behaviors_after(self, user_id: int, before_ts: int) -> DayBehaviors:
        """The user's appended behaviors dated after the snapshot date with ``ts < before_ts``."""


class SnapshotWriter(ABC):
    """The rows of a new snapshot; :meth:`switch` makes it current (nothing is visible before)."""

    @abstractmethod
    def put_users(self, rows: Iterable[tuple[int, UserRecord]]) -> int: ...

    @abstractmethod
    def put_categories(self, rows: Iterable[tuple[int, int, CategoryRecord]]) -> int: ...

    @abstractmethod
    def switch(self) -> SnapshotInfo: ...


class SnapshotStore(ABC):
    """Where the online scorer reads the UBT; ``name`` says which store in every error."""
    name: str

    @abstractmethod
    def current(self) -> SnapshotInfo | None: ...

    @abstractmethod
    def new_snapshot(self, date: str, meta: Mapping) -> SnapshotWriter: ...

    @abstractmethod
    def view(self, request_date: str | None = None) -> "contextmanager[SnapshotView]":
        """A consistent read: UBT(request_date - 1) when the store still holds it, else the current
        snapshot if older (stale: its date says so); :class:`SnapshotNotServable` when only newer
        ones exist, :class:`StoreUnavailable` when there is none or the store cannot be read."""

    @abstractmethod
    def append(self, user_id: int, behaviors: Iterable[tuple[int, int, int]]) -> int:
        """Add a user's behaviors ``(ts, item_id, category_id)`` that happened after the snapshot."""

    @abstractmethod
    def load_day(self, date: str, rows: Iterable[tuple[int, int, int, int]]) -> int:
        """Replace the appended behaviors of ``date`` by ``rows`` ``(user_id, ts, item_id, category_id)``
        (a micro-batch: re-running it gives the same store)."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (generation INTEGER PRIMARY KEY AUTOINCREMENT, date TEXT NOT NULL,
    meta TEXT NOT NULL, complete INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pointer (id INTEGER PRIMARY KEY CHECK (id = 0), generation INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS users (generation INTEGER NOT NULL, user_id INTEGER NOT NULL, r_ts BLOB,
    r_items BLOB, r_cats BLOB, ubt_count INTEGER NOT NULL, first_day_ts BLOB,
    PRIMARY KEY (generation, user_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS categories (generation INTEGER NOT NULL, user_id INTEGER NOT NULL,
    category_id INTEGER NOT NULL, ts BLOB, items BLOB, last_ts INTEGER NOT NULL,
    PRIMARY KEY (generation, user_id, category_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS behaviors (user_id INTEGER NOT NULL, date TEXT NOT NULL, ts INTEGER NOT NULL,
    item_id INTEGER NOT NULL, category_id INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS behaviors_by_user ON behaviors (user_id, date);
"""


def snapshot_for_request(name: str, current: SnapshotInfo | None, request_date: str | None,
                         of_date: Callable[[str], SnapshotInfo | None], store_arg: object) -> SnapshotInfo:
    """The snapshot a request of ``request_date`` reads: UBT(request_date - 1) when the store holds it
    (``of_date``), else the current one unless that is later (it would hold behaviors after the request);
    the current one when no date is given. ``store_arg``: the ``--store`` to name in the message."""
    if current is None:
        raise StoreUnavailable(f"the {name} holds no snapshot yet: run `jobs/export_ubt.py --date D --store {store_arg}`")
    if request_date is None:
        return current
    from sim.ubt.dates import shift_date
    wanted = shift_date(request_date, -1)
    if current.date == wanted:
        return current
    older = of_date(wanted)
    if older is not None:
        return older
    if current.date > wanted:
        raise SnapshotNotServable(f"a request of {request_date} reads UBT({wanted}); the {name} holds only later "
                                  f"snapshots (current UBT({current.date})), which hold behaviors after it")
    return current


class SqliteStore(SnapshotStore):
    """The embedded store: one SQLite file in WAL mode (any number of reading processes and threads,
    one writer at a time; a writer never blocks a reader). ``create`` makes the file (the export does);
    the service opens an existing one and fails with :class:`StoreUnavailable` naming it otherwise."""

    def __init__(self, path: str | os.PathLike, create: bool = False, busy_timeout_ms: int = 10_000):
        self.path = Path(path)
        self.name = f"sqlite store {self.path}"
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect(create=True) as c:
                c.execute("PRAGMA journal_mode=WAL")
                c.executescript(_SCHEMA)

    # ------------------------------------------------------------------------------ connections
    def _connect(self, create: bool = False) -> sqlite3.Connection:
        if not create and not self.path.exists():
            raise StoreUnavailable(f"the {self.name} does not exist: export a snapshot into it with "
                                   f"`jobs/export_ubt.py --date D --store {self.path}`")
        try:
            c = sqlite3.connect(f"file:{self.path}?mode={'rwc' if create else 'rw'}", uri=True,
                                isolation_level=None, timeout=self.busy_timeout_ms / 1000)
            c.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            c.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as e:
            raise StoreUnavailable(f"the {self.name} cannot be opened: {e}") from e
        return c

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (SQLite connections are not shared between threads)."""
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = self._connect()
        return c

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        if not self.path.exists():  # removed under an open connection, which would keep reading it
            self.close()
        c = self._conn()
        try:
            c.execute("BEGIN")  # deferred: the first SELECT fixes the view of the file
        except sqlite3.Error as e:
            self.close()
            raise StoreUnavailable(f"the {self.name} cannot be read: {e}") from e
        try:
            yield c
        except sqlite3.Error as e:
            raise StoreUnavailable(f"the {self.name} cannot be read: {e}") from e
        finally:
            try:
                c.execute("COMMIT")
            except sqlite3.Error:
                self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        else:
            c.execute("COMMIT")

    # ----------------------------------------------------------------------------------- reading
    @staticmethod
    def _info(c: sqlite3.Connection, generation: int) -> SnapshotInfo:
        date, meta = c.execute("SELECT date, meta FROM snapshots WHERE generation = ?", (generation,)).fetchone()
        return SnapshotInfo(generation, date, json.loads(meta))

    def _current(self, c: sqlite3.Connection) -> SnapshotInfo | None:
        try:
            row = c.execute("SELECT generation FROM pointer WHERE id = 0").fetchone()
        except sqlite3.OperationalError as e:  # a file that is not a store (no tables)
            raise StoreUnavailable(f"the {self.name} holds no serving store ({e}): export a snapshot "
                                   f"into it with `jobs/export_ubt.py --date D --store {self.path}`") from e
        return self._info(c, row[0]) if row else None

    def current(self) -> SnapshotInfo | None:
        with self._read() as c:
            return self._current(c)

    def snapshot_dates(self) -> list[str]:
        with self._read() as c:
            return [r[0] for r in c.execute("SELECT DISTINCT date FROM snapshots WHERE complete = 1 ORDER BY date")]

    @contextmanager
    def view(self, request_date: str | None = None) -> Iterator[SnapshotView]:
        with self._read() as c:
            def of_date(date: str) -> SnapshotInfo | None:
                row = c.execute("SELECT MAX(generation) FROM snapshots WHERE complete = 1 AND date = ?",
                                (date,)).fetchone()
                return None if row[0] is None else self._info(c, row[0])
            yield _SqliteView(c, snapshot_for_request(self.name, self._current(c), request_date, of_date, self.path))

    # ----------------------------------------------------------------------------------- writing
    def new_snapshot(self, date: str, meta: Mapping) -> SnapshotWriter:
        with self._write() as c:
            cur = c.execute("INSERT INTO snapshots (date, meta, created) VALUES (?, ?, ?)",
                            (date, json.dumps(dict(meta), sort_keys=True), time.time()))
            generation = cur.lastrowid
        return _SqliteWriter(self, generation, date)

    def append(self, user_id: int, behaviors: Iterable[tuple[int, int, int]]) -> int:
        rows = [(int(user_id), _date_of(ts), int(ts), int(item), int(cat)) for ts, item, cat in behaviors]
        with self._write() as c:
            c.executemany("INSERT INTO behaviors VALUES (?, ?, ?, ?, ?)", rows)
        return len(rows)

    def load_day(self, date: str, rows: Iterable[tuple[int, int, int, int]]) -> int:
        n = 0
        with self._write() as c:
            c.execute("DELETE FROM behaviors WHERE date = ?", (date,))
            for batch in _batches(rows, 10_000):
                bad = [r for r in batch if _date_of(r[1]) != date]
                if bad:
                    raise ValueError(f"load_day({date}): behavior at ts={bad[0][1]} is of {_date_of(bad[0][1])}")
                c.executemany("INSERT INTO behaviors VALUES (?, ?, ?, ?, ?)",
                              [(int(u), date, int(ts), int(i), int(k)) for u, ts, i, k in batch])
                n += len(batch)
        return n


def _batches(rows: Iterable, size: int) -> Iterator[list]:
    batch = []
    for r in rows:
        batch.append(r)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _SqliteView(SnapshotView):
    def __init__(self, c: sqlite3.Connection, info: SnapshotInfo):
        self._c, self.info = c, info

    def user(self, user_id: int) -> UserRecord | None:
        row = self._c.execute("SELECT r_ts, r_items, r_cats, ubt_count, first_day_ts FROM users "
                              "WHERE generation = ? AND user_id = ?", (self.info.generation, int(user_id))).fetchone()
        if row is None:
            return None
        return UserRecord(_array(row[0]), _array(row[1]), _array(row[2]), int(row[3]), _array(row[4]))

    def categories(self, user_id: int, category_ids: Sequence[int]) -> dict[int, CategoryRecord]:
        cats = sorted({int(k) for k in category_ids})
        out = {}
        for i in range(0, len(cats), 500):  # SQLite's bound-parameter limit
            part = cats[i:i + 500]
            q = (f"SELECT category_id, ts, items, last_ts FROM categories WHERE generation = ? AND user_id = ? "
                 f"AND category_id IN ({','.join('?' * len(part))})")
            for k, ts, items, last in self._c.execute(q, (self.info.generation, int(user_id), *part)):
                out[int(k)] = CategoryRecord(_array(ts), _array(items), int(last))
        return out

    def behaviors_after(self, user_id: int, before_ts: int) -> DayBehaviors:
        rows = self._c.execute("SELECT ts, item_id, category_id FROM behaviors WHERE user_id = ? AND date > ? "
                               "AND ts < ?", (int(user_id), self.info.date, int(before_ts))).fetchall()
        if not rows:
            return DayBehaviors.empty()
        a = np.asarray(rows, dtype=np.int64)
        return DayBehaviors(a[:, 0], a[:, 1], a[:, 2])


class _SqliteWriter(SnapshotWriter):
    def __init__(self, store: SqliteStore, generation: int, date: str):
        self.store, self.generation, self.date = store, generation, date

    def put_users(self, rows: Iterable[tuple[int, UserRecord]]) -> int:
        n = 0
        for batch in _batches(rows, 5_000):
            with self.store._write() as c:
                c.executemany("INSERT OR REPLACE INTO users VALUES (?, ?, ?, ?, ?, ?, ?)",
                              [(self.generation, int(u), _blob(r.r_ts), _blob(r.r_items), _blob(r.r_cats),
                                int(r.ubt_count), _blob(r.first_day_ts)) for u, r in batch])
            n += len(batch)
        return n

    def put_categories(self, rows: Iterable[tuple[int, int, CategoryRecord]]) -> int:
        n = 0
        for batch in _batches(rows, 10_000):
            with self.store._write() as c:
                c.executemany("INSERT OR REPLACE INTO categories VALUES (?, ?, ?, ?, ?, ?)",
                              [(self.generation, int(u), int(k), _blob(r.ts), _blob(r.items), int(r.last_ts))
                               for u, k, r in batch])
            n += len(batch)
        return n

    def switch(self) -> SnapshotInfo:
        """Mark the snapshot complete and make it current in one transaction; then drop what no request
        can read any more: snapshots of older dates than the newest ``KEEP_SNAPSHOT_DATES``, unfinished
        exports, other generations of the kept dates, and appended behaviors already in every kept one."""
        with self.store._write() as c:
            c.execute("UPDATE snapshots SET complete = 1 WHERE generation = ?", (self.generation,))
            c.execute("INSERT INTO pointer (id, generation) VALUES (0, ?) "
                      "ON CONFLICT (id) DO UPDATE SET generation = excluded.generation", (self.generation,))
            info = self.store._info(c, self.generation)
        with self.store._write() as c:
            dates = [r[0] for r in c.execute(
                "SELECT DISTINCT date FROM snapshots WHERE complete = 1 ORDER BY date DESC")]
            kept = dates[:KEEP_SNAPSHOT_DATES]
            keep_gens = [c.execute("SELECT MAX(generation) FROM snapshots WHERE complete = 1 AND date = ?",
                                   (d,)).fetchone()[0] for d in kept]
            drop = [r[0] for r in c.execute(
                f"SELECT generation FROM snapshots WHERE generation NOT IN ({','.join('?' * len(keep_gens))}) "
                f"AND generation < ?", (*keep_gens, self.generation))]
            for g in drop:
                c.execute("DELETE FROM users WHERE generation = ?", (g,))
                c.execute("DELETE FROM categories WHERE generation = ?", (g,))
                c.execute("DELETE FROM snapshots WHERE generation = ?", (g,))
            if kept:
                c.execute("DELETE FROM behaviors WHERE date <= ?", (min(kept),))
        log.info("%s: UBT(%s) is current (generation %s); dropped generations %s", self.store.name, self.date,
                 self.generation, drop or "none")
        return info


STORE_SCHEMES = ("redis", "rediss", "unix", "valkey")


def open_store(where: str | os.PathLike, create: bool = False) -> SnapshotStore:
    """The store ``--store`` names: a file path -> the embedded :class:`SqliteStore` (``create``: make
    the file); ``redis://HOST:PORT/DB`` (``rediss://``, ``unix://``, ``valkey://``) -> a
    :class:`sim.serving.redis_store.RedisStore`. Any other ``scheme://`` is refused, saying what to give."""
    text = os.fspath(where)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if not scheme:
        return SqliteStore(text, create=create)
    if scheme in STORE_SCHEMES:
        from sim.serving.redis_store import RedisStore
        return RedisStore(text)
    from sim.config import ConfigError
    raise ConfigError(f"serving store {text!r}: unknown scheme {scheme!r}. Give a file path for the embedded "
                      f"store (e.g. serving/ubt.sqlite) or redis://HOST:PORT/DB for a Redis or Valkey server "
                      f"(also {', '.join(s + '://' for s in STORE_SCHEMES[1:])})")
