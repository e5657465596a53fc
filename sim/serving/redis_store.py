"""The serving store on a Redis (or Valkey) server: the same snapshots and append path as the embedded
store (:mod:`sim.serving.store`), for a scoring service of several processes or hosts. Selected by a
URL in place of a file: ``--store redis://HOST:PORT/DB`` (``rediss://`` for TLS, ``unix:///path.sock?db=N``
for a socket, ``valkey://`` as ``redis://``; ``?prefix=NAME`` sets the key prefix, default ``sim``).
The redis client is imported here and nowhere else.

Keys (``P`` the prefix, ``G`` a snapshot's generation, a number from ``P:generation``):

- ``P:G:<user>``: a hash, the paper's key-key-value index user -> category -> behaviors: field
  ``<category_id>`` holds the (user, category) record (``last_ts`` and the key's newest ``hard_k``
  behaviors), field ``w`` the user's short-term window inputs (the newest behaviors across categories,
  ``ubt_count``, the times of the window's first day). Values are little-endian int64 arrays.
- ``P:G:info``: the snapshot's date, meta (JSON) and ``complete``.
- ``P:current``: the pointer, the generation requests read; ``P:dates``: date -> generation of the
  complete snapshots kept; ``P:generations``: every generation not yet dropped; ``P:retired``: sorted
  set of the generations no longer kept, scored by when they were retired.
- ``P:day:<date>:<user>``: a list of the user's appended behaviors of that date (ts, item, category);
  ``P:day:<date>:users`` and ``P:days`` index them.

Snapshot switch. An export writes ``P:G:*`` under a new generation nobody reads, then one MULTI/EXEC
marks it complete, records it in ``P:dates`` and sets ``P:current``: atomic for every reader. A request
resolves the pointer once (:meth:`RedisStore.view`) and reads only keys of that generation, so it
never mixes two dates, and requests are served while a snapshot is being exported.

Dropping old snapshots. The switch keeps the snapshots of the two newest dates (as the embedded store)
and *retires* the others: they leave ``P:dates`` (no new request can pick them) and enter ``P:retired``
with the time. Their keys are deleted only ``retire_grace_s`` seconds later (default 60 s; a request
holds its view for milliseconds and the service's requests are far shorter than that), by the next
switch or :meth:`RedisStore.collect`: first ``P:G:info``, then the ``P:G:<user>`` hashes (SCAN + UNLINK).
Every read of a view runs in one MULTI/EXEC with a check that ``P:G:info`` still exists, so a reader
that was somehow still on a dropped snapshot gets an error (503), never a half-deleted one.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, Mapping, Sequence
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import numpy as np
import redis

from sim.serving.store import (KEEP_SNAPSHOT_DATES, CategoryRecord, DayBehaviors, SnapshotInfo,
                               SnapshotStore, SnapshotView, SnapshotWriter,
                               StoreUnavailable, UserRecord, _batches, _date_of, snapshot_for_request)

log = logging.getLogger(__name__)

RETIRE_GRACE_S = 60.0
WINDOW_FIELD = b"w"


def _pack(*parts: np.ndarray, head: Sequence[int] = ()) -> bytes:
    """``head`` scalars, the length of each part, then the parts: one int64 array."""
    arrays = [np.asarray(p, dtype="<i8") for p in parts]
    return np.concatenate([np.asarray([*head, *(len(a) for a in arrays)], dtype="<i8"), *arrays]).tobytes()


def _unpack(blob: bytes, heads: int, parts: int) -> tuple[list[int], list[np.ndarray]]:
    a = np.frombuffer(blob, dtype="<i8").astype(np.int64)
    head, lengths = a[:heads].tolist(), a[heads:heads + parts]
    out, at = [], heads + parts
    for n in lengths.tolist():
        out.append(a[at:at + n])
        at += n
    return head, out


def _user_blob(r: UserRecord) -> bytes:
    return _pack(r.r_ts, r.r_items, r.r_cats, r.first_day_ts, head=(r.ubt_count,))


def _user_of(blob: bytes) -> UserRecord:
    (count,), (ts, items, cats, first) = _unpack(blob, 1, 4)
    return UserRecord(ts, items, cats, int(count), first)


def _category_blob(r: CategoryRecord) -> bytes:
    return _pack(r.ts, r.items, head=(r.last_ts,))


def _category_of(blob: bytes) -> CategoryRecord:
    (last,), (ts, items) = _unpack(blob, 1, 2)
    return CategoryRecord(ts, items, int(last))


def _redacted(url: str) -> str:
    """The URL without its password (store names end up in logs and answers)."""
    u = urlsplit(url)
    if u.password is None:
        return url
    host = (u.hostname or "") + (f":{u.port}" if u.port else "")
    return urlunsplit((u.scheme, f"{u.username or ''}:***@{host}", u.path, u.query, u.fragment))


class RedisStore(SnapshotStore):
    """The serving store on a Redis/Valkey server at ``url``; see the module docstring for the layout.
    One client (a thread-safe connection pool) per store object."""

    def __init__(self, url: str, prefix: str | None = None, retire_grace_s: float = RETIRE_GRACE_S,
                 socket_timeout: float = 5.0):
        u = urlsplit(url)
        query = parse_qs(u.query)
        prefix = prefix or query.pop("prefix", ["sim"])[0]
        scheme = "redis" if u.scheme == "valkey" else u.scheme
        self.url = urlunsplit((scheme, u.netloc, u.path, urlencode(query, doseq=True), ""))
        self.prefix, self.retire_grace_s = prefix, retire_grace_s
        self.name = f"redis store {_redacted(self.url)} (key prefix {prefix})"
        try:
            self.client = redis.Redis.from_url(self.url, socket_timeout=socket_timeout,
                                               socket_connect_timeout=socket_timeout)
        except ValueError as e:
            raise StoreUnavailable(f"the {self.name} is not a usable URL: {e}") from e
        self._infos: dict[int, SnapshotInfo] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------ keys
    def key(self, *parts) -> str:
        return ":".join([self.prefix, *(str(p) for p in parts)])

    @contextmanager
    def _server(self, doing: str) -> Iterator[None]:
        """Connection and server errors as :class:`StoreUnavailable` naming the store."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise StoreUnavailable(f"the {self.name} cannot be reached ({doing}): {e}; start the server "
                                   "or point --store at a running one") from e
        except redis.ResponseError as e:
            raise StoreUnavailable(f"the {self.name} refused {doing}: {e}") from e

    def close(self) -> None:
        self.client.close()

    # ----------------------------------------------------------------------------------- reading
    def _info(self, generation: int) -> SnapshotInfo | None:
        """A complete snapshot's info (immutable, so cached), None when it was dropped."""
        info = self._infos.get(generation)
        if info is None:
            raw = self.client.hgetall(self.key(generation, "info"))
            if not raw:
                return None
            info = SnapshotInfo(generation, raw[b"date"].decode(), json.loads(raw[b"meta"]))
            if raw.get(b"complete") == b"1":
                with self._lock:
                    self._infos[generation] = info
        return info

    def current(self) -> SnapshotInfo | None:
        with self._server("reading the current snapshot"):
            g = self.client.get(self.key("current"))
            return None if g is None else self._info(int(g))

    def snapshot_dates(self) -> list[str]:
        with self._server("listing the snapshots"):
            return sorted(d.decode() for d in self.client.hkeys(self.key("dates")))

    @contextmanager
    def view(self, request_date: str | None = None) -> Iterator[SnapshotView]:
        with self._server("resolving the snapshot pointer"):
            def of_date(date: str) -> SnapshotInfo | None:
                g = self.client.hget(self.key("dates"), date)
                return self._info(int(g)) if g is not None else None
            info = snapshot_for_request(self.name, self.current(), request_date, of_date, _redacted(self.url))
        yield _RedisView(self, info)

    # ----------------------------------------------------------------------------------- writing
    def new_snapshot(self, date: str, meta: Mapping) -> SnapshotWriter:
        with self._server("starting a snapshot"):
            g = int(self.client.incr(self.key("generation")))
            p = self.client.pipeline(transaction=True)
            p.sadd(self.key("generations"), g)
            p.hset(self.key(g, "info"), mapping={"date": date, "meta": json.dumps(dict(meta), sort_keys=True),
                                                 "complete": 0, "created": time.time()})
            p.execute()
        return _RedisWriter(self, g, date)

    def append(self, user_id: int, behaviors: Iterable[tuple[int, int, int]]) -> int:
        rows = [(int(ts), int(item), int(cat)) for ts, item, cat in behaviors]
        with self._server("appending behaviors"):
            p = self.client.pipeline(transaction=True)
            for ts, item, cat in rows:
                d = _date_of(ts)
                p.rpush(self.key("day", d, int(user_id)), _pack(head=(ts, item, cat)))
                p.sadd(self.key("day", d, "users"), int(user_id))
                p.sadd(self.key("days"), d)
            p.execute()
        return len(rows)

    def load_day(self, date: str, rows: Iterable[tuple[int, int, int, int]]) -> int:
        """Replace ``date``'s appended behaviors in one MULTI/EXEC (the day is grouped per user in this
        process first: a micro-batch of one day's behaviors)."""
        per_user: dict[int, list[bytes]] = {}
        for u, ts, item, cat in rows:
            if _date_of(ts) != date:
                raise ValueError(f"load_day({date}): behavior at ts={ts} is of {_date_of(ts)}")
            per_user.setdefault(int(u), []).append(_pack(head=(int(ts), int(item), int(cat))))
        with self._server(f"loading the behaviors of {date}"):
            users_key = self.key("day", date, "users")
            old = [int(u) for u in self.client.smembers(users_key)]
            p = self.client.pipeline(transaction=True)
            p.delete(users_key, *(self.key("day", date, u) for u in old))
            for u, blobs in per_user.items():
                p.rpush(self.key("day", date, u), *blobs)
            if per_user:
                p.sadd(users_key, *per_user)
                p.sadd(self.key("days"), date)
            p.execute()
        return sum(len(b) for b in per_user.values())

    def collect(self, now: float | None = None) -> list[int]:
        """Delete the keys of the snapshots retired more than ``retire_grace_s`` ago (see the module
        docstring); the generations dropped."""
        now = time.time() if now is None else now
        dropped = []
        with self._server("dropping old snapshots"):
            for g in (int(x) for x in self.client.zrangebyscore(self.key("retired"), "-inf",
                                                                 now - self.retire_grace_s)):
                self.client.delete(self.key(g, "info"))  # first: a reader still on it now fails loudly
                for batch in _batches(self.client.scan_iter(match=f"{self.prefix}:{g}:*", count=1000), 1000):
                    self.client.unlink(*batch)
                p = self.client.pipeline(transaction=True)
                p.zrem(self.key("retired"), g)
                p.srem(self.key("generations"), g)
                p.execute()
                dropped.append(g)
        return dropped


class _RedisView(SnapshotView):
    def __init__(self, store: RedisStore, info: SnapshotInfo):
        self.store, self.info = store, info
        self._hash = store.key(info.generation)  # P:G; the user's hash is P:G:<user>

    def _read(self, doing: str, fill) -> list:
        """``fill(pipeline)``'s commands in one MULTI/EXEC, with the check that the snapshot still exists."""
        s = self.store
        with s._server(doing):
            p = s.client.pipeline(transaction=True)
            p.exists(s.key(self.info.generation, "info"))
            fill(p)
            alive, *out = p.execute()
        if not alive:
            raise StoreUnavailable(f"the {s.name} dropped UBT({self.info.date}) (generation "
                                   f"{self.info.generation}) while a request read it: retry the request")
        return out

    def user(self, user_id: int) -> UserRecord | None:
        (blob,) = self._read("reading a user", lambda p: p.hget(f"{self._hash}:{int(user_id)}", WINDOW_FIELD))
        return None if blob is None else _user_of(blob)

    def categories(self, user_id: int, category_ids: Sequence[int]) -> dict[int, CategoryRecord]:
        cats = sorted({int(k) for k in category_ids})
        if not cats:
            return {}
        (blobs,) = self._read("reading categories", lambda p: p.hmget(f"{self._hash}:{int(user_id)}", cats))
        return {k: _category_of(b) for k, b in zip(cats, blobs) if b is not None}

    def behaviors_after(self, user_id: int, before_ts: int) -> DayBehaviors:
        s = self.store
        with s._server("reading the appended behaviors"):
            days = sorted(d.decode() for d in s.client.smembers(s.key("days")) if d.decode() > self.info.date)
            if not days:
                return DayBehaviors.empty()
            p = s.client.pipeline(transaction=False)
            for d in days:
                p.lrange(s.key("day", d, int(user_id)), 0, -1)
            lists = p.execute()
        blobs = [b for lst in lists for b in lst]
        if not blobs:
            return DayBehaviors.empty()
        a = np.frombuffer(b"".join(blobs), dtype="<i8").astype(np.int64).reshape(-1, 3)
        a = a[a[:, 0] < int(before_ts)]
        return DayBehaviors(a[:, 0], a[:, 1], a[:, 2])


class _RedisWriter(SnapshotWriter):
    def __init__(self, store: RedisStore, generation: int, date: str):
        self.store, self.generation, self.date = store, generation, date

    def _put(self, rows: Iterable, field_and_blob, batch: int, doing: str) -> int:
        s, n = self.store, 0
        with s._server(doing):
            for part in _batches(rows, batch):
                p = s.client.pipeline(transaction=False)
                for row in part:
                    user, field, blob = field_and_blob(row)
                    p.hset(s.key(self.generation, int(user)), field, blob)
                p.execute()
                n += len(part)
        return n

    def put_users(self, rows: Iterable[tuple[int, UserRecord]]) -> int:
        return self._put(rows, lambda r: (r[0], WINDOW_FIELD, _user_blob(r[1])), 2_000, "writing users")

    def put_categories(self, rows: Iterable[tuple[int, int, CategoryRecord]]) -> int:
        return self._put(rows, lambda r: (r[0], int(r[1]), _category_blob(r[2])), 5_000, "writing categories")

    def switch(self) -> SnapshotInfo:
        """Make the snapshot current in one MULTI/EXEC; retire what no new request can read (older dates
        than the newest ``KEEP_SNAPSHOT_DATES``, unfinished exports, other generations of the kept dates)
        and appended behaviors already in every kept snapshot; then :meth:`RedisStore.collect`."""
        s, g = self.store, self.generation
        with s._server("switching the snapshot"):
            p = s.client.pipeline(transaction=True)
            p.hset(s.key(g, "info"), "complete", 1)
            p.hget(s.key("dates"), self.date)
            p.hset(s.key("dates"), self.date, g)
            p.set(s.key("current"), g)
            _, replaced, *_ = p.execute()
            dates = {d.decode(): int(x) for d, x in s.client.hgetall(s.key("dates")).items()}
            kept = sorted(dates, reverse=True)[:KEEP_SNAPSHOT_DATES]
            keep = {dates[d] for d in kept}
            now = time.time()
            retire = [x for x in (int(y) for y in s.client.smembers(s.key("generations")))
                      if x not in keep and x < g]
            p = s.client.pipeline(transaction=True)
            for d in dates:
                if d not in kept:
                    p.hdel(s.key("dates"), d)
            for x in retire:
                p.zadd(s.key("retired"), {x: now}, nx=True)
            p.execute()
            for d in sorted(x.decode() for x in s.client.smembers(s.key("days"))):
                if kept and d <= min(kept):
                    users = list(s.client.smembers(s.key("day", d, "users")))
                    s.client.delete(s.key("day", d, "users"), *(s.key("day", d, int(u)) for u in users))
                    s.client.srem(s.key("days"), d)
        dropped = s.collect()
        info = s._info(g)
        log.info("%s: UBT(%s) is current (generation %s, replacing %s); retired %s, dropped %s", s.name,
                 self.date, g, replaced, retire or "none", dropped or "none")
        return info
