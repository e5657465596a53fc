"""Delta Lake I/O in one place: idempotent date writes, date -> version lookup, snapshot file lists.

Rules from DESIGN.md ("Data model"):
- every nightly write is idempotent: a date's write carries a Delta transaction id (txnAppId per table
  and date), so re-running the date is a no-op unless forced, and a forced re-run replaces exactly that
  date (replaceWhere). A crash mid-write leaves the previous version intact (Delta commits atomically).
- each job commit records ``{"job": ..., "date": ...}`` as Delta userMetadata, so the version a nightly
  run committed for a date is found later by :func:`version_for_date` and read by time travel.
- Petastorm reads Parquet files directly, so it gets the file list of the Delta snapshot
  (:func:`snapshot_files`), never a directory listing that would include files an overwrite removed.
- a lakehouse is a local directory or an S3 URI (:mod:`sim.adapters.storage`): table paths are joined
  there and handed to Spark as ``s3a://``, to delta-rs as ``s3://`` with the ``AWS_*`` settings.

Delta on S3 assumes a single writer per table: S3 has no atomic put-if-absent rename that Delta's
default S3 LogStore could use, so two clusters committing to one table at the same moment can overwrite
each other's commit. Our jobs are one writer per table and date (the scheduler runs one job per table at
a time); concurrent writers would need a LogStore with mutual exclusion (README "Object storage").
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sim.adapters import storage

log = logging.getLogger(__name__)


class MissingTableError(RuntimeError):
    """A table a job needs does not exist; the message names the job that writes it."""


def table_path(lakehouse: str, name: str) -> str:
    """The table ``name`` under ``lakehouse``: an absolute local path, or an ``s3a://`` URI (Spark's
    spelling, whichever S3 scheme the lakehouse was given with)."""
    return storage.spark_uri(storage.join(lakehouse, name))


def _has_log(spark: SparkSession, path: str) -> bool:
    """Whether ``path`` holds a ``_delta_log`` directory, asked of the file system Spark uses (on S3,
    with Spark's S3A settings)."""
    if not storage.is_remote(path):
        return os.path.isdir(os.path.join(path, "_delta_log"))
    jvm = spark._jvm
    log_dir = jvm.org.apache.hadoop.fs.Path(storage.join(storage.spark_uri(path), "_delta_log"))
    return bool(log_dir.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).exists(log_dir))


def is_delta_table(spark: SparkSession, path: str) -> bool:
    from delta.tables import DeltaTable
    return _has_log(spark, path) and DeltaTable.isDeltaTable(spark, path)


def require_table(spark: SparkSession, path: str, hint: str) -> None:
    """Fail fast with ``hint`` (what to run) when ``path`` is not a Delta table."""
    if not is_delta_table(spark, path):
        raise MissingTableError(f"no Delta table at {path}: {hint}")


def read_table(spark: SparkSession, path: str, version: int | None = None) -> DataFrame:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", int(version))
    return reader.load(path)


def _txn_app_id(job: str, date: str) -> str:
    return f"sim.{job}.{date}"


def write_date(df: DataFrame, path: str, *, job: str, date: str, partition_col: str | None = "dt",
               force: bool = False, extra_metadata: dict | None = None,
               replace_where: str | None = None) -> bool:
    """Write ``df`` as the rows of ``date`` in the Delta table at ``path``, idempotently.

    With a partition column, the write replaces exactly that date (``replaceWhere``); without one it
    appends (the caller owns what an append means). ``replace_where`` replaces another predicate instead
    (a date range for importers, ``dt = D AND source = S`` for rejects); ``date`` then is its label. The write carries txnAppId=sim.<job>.<date>: a second
    run of the same date is skipped by Delta itself unless ``force`` bumps the transaction version.

    Returns:
        True if a commit was made, False if Delta skipped it as already committed.
    """
    app_id = _txn_app_id(job, date)
    spark = df.sparkSession
    version_before = latest_version(spark, path)
    txn_version = 0
    if force and version_before is not None:
        # A forced re-run needs a transaction version above the last one Delta saw for this app id.
        txn_version = _last_txn_version(spark, path, app_id) + 1
    meta = {"job": job, "date": date, **(extra_metadata or {})}
    writer = (df.write.format("delta")
              .option("txnAppId", app_id).option("txnVersion", txn_version)
              .option("userMetadata", json.dumps(meta, sort_keys=True)))
    if partition_col:
        writer = (writer.mode("overwrite").partitionBy(partition_col)
                  .option("replaceWhere", replace_where or f"{partition_col} = '{date}'"))
    else:
        writer = writer.mode("append")
    with session_conf(spark, RECORD_EMPTY_COMMITS):  # an empty date is written (allowed by the job)
        writer.save(path)
    committed = latest_version(spark, path) != version_before
    if not committed:
        log.info("%s for %s already committed to %s; skipped (use force to rewrite)", job, date, path)
    return committed


def _snapshot(spark: SparkSession, path: str):
    """The table's DeltaLog (the JVM object) and its current snapshot: the log listed again, its state
    not computed (no Spark job)."""
    jvm = spark._jvm
    delta_log = jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, path)
    return delta_log, delta_log.update(False, jvm.scala.Option.empty(), jvm.scala.Option.empty())


def latest_version(spark: SparkSession, path: str) -> int | None:
    """The table's newest version (None when there is no table), from its log listing in the driver:
    ``DeltaTable.history(1)`` gives the same number through a Spark job, 20 times slower on a small table."""
    if not is_delta_table(spark, path):
        return None
    return int(_snapshot(spark, path)[1].version())


@dataclass(frozen=True)
class CommitInfo:
    version: int
    operation: str
    metrics: dict  # Delta's operationMetrics (strings), empty when the commit recorded none


def last_commit(spark: SparkSession, path: str) -> CommitInfo:
    """The newest commit of the table at ``path``: its version, operation and metrics, read from its
    commit file in the driver (what ``DeltaTable.history(1)`` returns, without a Spark job)."""
    jvm = spark._jvm
    delta_log, snap = _snapshot(spark, path)
    version = int(snap.version())
    commit_file = jvm.org.apache.spark.sql.delta.util.FileNames.unsafeDeltaFile(delta_log.logPath(), version)
    info = jvm.org.apache.spark.sql.delta.DeltaHistoryManager.getCommitInfoOpt(
        delta_log.store(), commit_file, delta_log.newDeltaHadoopConf())
    if not info.isDefined():  # the newest commit's file is never cleaned up (a checkpoint's version keeps it)
        raise RuntimeError(f"{path}: no commit information in {commit_file.toString()}")
    metrics = info.get().operationMetrics()
    as_java = jvm.scala.jdk.javaapi.CollectionConverters.asJava
    return CommitInfo(version, info.get().operation(),
                      {str(k): str(v) for k, v in as_java(metrics.get()).items()} if metrics.isDefined() else {})


def _last_txn_version(spark: SparkSession, path: str, app_id: str) -> int:
    """Highest txnVersion Delta recorded for ``app_id`` (-1 if none), from the table's current snapshot:
    Delta's own transaction state, which checkpoints carry forward, so it survives log clean-up of the
    JSON commits that first recorded it (and works on any file system Spark reads)."""
    version = _snapshot(spark, path)[1].transactions().get(app_id)
    return int(version.get()) if version.isDefined() else -1


RETENTION_PROPERTIES = ("delta.logRetentionDuration", "delta.deletedFileRetentionDuration")


def set_retention(spark: SparkSession, path: str, days: int) -> bool:
    """Declare on the table that every version of the last ``days`` days stays readable: both the log
    (``delta.logRetentionDuration``, what log clean-up keeps) and the files later commits removed
    (``delta.deletedFileRetentionDuration``, what a plain ``VACUUM`` keeps). Returns True if the table's
    properties changed (one SET TBLPROPERTIES commit); a table that already declares them is left alone."""
    want = f"interval {int(days)} days"
    props = {r.key: r.value for r in spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect()}
    if all(props.get(k) == want for k in RETENTION_PROPERTIES):
        return False
    settings = ", ".join(f"'{k}' = '{want}'" for k in RETENTION_PROPERTIES)
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ({settings})")
    return True


@contextlib.contextmanager
def session_conf(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """The Spark session settings ``settings`` inside the block; the previous values (or none) after."""
    previous = {k: spark.conf.get(k, None) for k in settings}
    for k, v in settings.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, v in previous.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)


# Delta (3.0 on) does not record a write that adds and removes no file. A job's commit marks its date
# done, and a day that genuinely had no rows (--allow-empty) must be marked too.
RECORD_EMPTY_COMMITS = {"spark.databricks.delta.skipRecordingEmptyCommits": "false"}


@contextlib.contextmanager
def retention_on_create(spark: SparkSession, days: int) -> Iterator[None]:
    """Inside the block, a Delta table created by a write declares the retention of
    :func:`set_retention` in its first commit (Delta's ``properties.defaults`` session settings), so a
    new table needs no extra commit for it."""
    prefix = "spark.databricks.delta.properties.defaults."
    with session_conf(spark, {prefix + k.split(".", 1)[1]: f"interval {int(days)} days"
                              for k in RETENTION_PROPERTIES}):
        yield


def commit_age_days(spark: SparkSession, path: str, version: int) -> float:
    """Days since ``version`` of the table was committed (from its history)."""
    import time
    ts = next((c.timestamp_ms for c in _commit_files(spark, path) if c.version == int(version)), None)
    if ts is None:
        return float("inf")  # log clean-up removed it
    return (time.time() * 1000 - ts) / 86_400_000


def operations_after(spark: SparkSession, path: str, version: int) -> list[tuple[int, str | None]]:
    """``(version, operation)`` of the table's commits after ``version`` (what ``DeltaTable.history()``
    gives of them), oldest first."""
    return [(c.version, c.operation) for c in _commit_files(spark, path) if c.version > version]


@dataclass(frozen=True)
class Commit:
    version: int
    job: str
    date: str
    metadata: dict


def job_commits(spark: SparkSession, path: str, job: str | None = None) -> list[Commit]:
    """Commits made by our jobs, oldest first, from the userMetadata each write records."""
    if not is_delta_table(spark, path):
        return []
    out = []
    for c in _commit_files(spark, path):
        try:
            meta = json.loads(c.user_metadata or "")
        except ValueError:
            continue
        if isinstance(meta, dict) and (job is None or meta.get("job") == job):
            out.append(Commit(c.version, meta.get("job", ""), meta.get("date", ""), meta))
    return out


@dataclass(frozen=True)
class _CommitFile:
    version: int
    timestamp_ms: int  # as ``DeltaTable.history()`` gives it: in-commit timestamp, else the file's time
    operation: str | None
    user_metadata: str | None


def _commit_files(spark: SparkSession, path: str) -> list[_CommitFile]:
    """The table's commits up to its current version whose files the log still holds (those of
    ``DeltaTable.history()``), oldest first, each commit file read in the driver through the table's
    log store for its ``commitInfo``. ``history()`` reads the same files in a Spark job and builds a
    DataFrame of them: several times the CPU on a table of a few dozen commits, and the jobs ask before
    every date."""
    jvm = spark._jvm
    delta_log, snap = _snapshot(spark, path)
    names, conf, store = jvm.org.apache.spark.sql.delta.util.FileNames, delta_log.newDeltaHadoopConf(), delta_log.store()
    get_info = jvm.org.apache.spark.sql.delta.DeltaHistoryManager.getCommitInfoOpt
    last = int(snap.version())
    files = store.listFrom(names.listingPrefix(delta_log.logPath(), 0), conf)
    out = []
    while files.hasNext():
        status = files.next()
        file = status.getPath()
        if not names.isDeltaFile(file) or (version := int(names.deltaVersion(file))) > last:
            continue
        info = get_info(store, file, conf)
        if not info.isDefined():  # a writer that recorded no commitInfo
            out.append(_CommitFile(version, int(status.getModificationTime()), None, None))
            continue
        commit_info = info.get()  # (each call on it is a round trip to the JVM)
        ict, meta = commit_info.inCommitTimestamp(), commit_info.userMetadata()
        out.append(_CommitFile(version, int(ict.get()) if ict.isDefined() else int(status.getModificationTime()),
                               str(commit_info.operation()), str(meta.get()) if meta.isDefined() else None))
    return sorted(out, key=lambda c: c.version)


def same_write_committed(spark: SparkSession, path: str, job: str, label: str, fp: str) -> bool:
    """True when the newest of our commits on the table is ``job`` for ``label`` with the input
    fingerprint ``fp`` (no other job wrote the table since): the same write need not run again."""
    commits = job_commits(spark, path)
    return bool(commits) and (commits[-1].job, commits[-1].date, commits[-1].metadata.get("fingerprint")) == (
        job, label, fp)


def version_for_date(spark: SparkSession, path: str, job: str, date: str) -> int | None:
    """The table version the last run of ``job`` for ``date`` committed (None if it never ran)."""
    versions = [c.version for c in job_commits(spark, path, job) if c.date == date]
    return max(versions) if versions else None


@dataclass(frozen=True)
class SnapshotFile:
    path: str  # a local filesystem path or URI as Delta records it
    num_rows: int


def snapshot_files(spark: SparkSession, path: str, where: str | None = None,
                   version: int | None = None) -> list[SnapshotFile]:
    """The Parquet files (and their row counts) of a Delta snapshot, optionally filtered by a partition
    predicate such as ``dt >= '2024-01-01'``.

    Uses the snapshot's ``_metadata.file_path``, so files an overwrite removed (still on disk until
    VACUUM) never appear. Row counts let every Horovod rank run the same number of steps.
    """
    df = read_table(spark, path, version)
    if where:
        df = df.where(where)
    rows = (df.select(F.col("_metadata.file_path").alias("f")).groupBy("f").count()
            .orderBy("f").collect())
    return [SnapshotFile(_local_path(r.f), int(r["count"])) for r in rows]


@dataclass(frozen=True)
class LogSnapshot:
    """A Delta snapshot's data files as its log lists them: ``(dt or None, file)`` pairs."""
    version: int
    files: tuple[tuple[str | None, SnapshotFile], ...]

    @property
    def dates(self) -> list[str]:
        return sorted({d for d, _ in self.files if d})

    def between(self, first: str | None = None, last: str | None = None) -> list[SnapshotFile]:
        """The files whose ``dt`` is in ``first..last`` (either bound may be open), by path."""
        def keep(d: str | None) -> bool:
            return ((first is None or (d is not None and d >= first))
                    and (last is None or (d is not None and d <= last)))
        return sorted((f for d, f in self.files if keep(d)), key=lambda f: f.path)


def log_snapshot(path: str, version: int | None = None) -> LogSnapshot:
    """The files (with row counts and ``dt``) of a Delta snapshot read from its log by delta-rs (the
    ``deltalake`` package), without a JVM: what a training process needs before Petastorm reads the
    Parquet files directly.

    A table whose files may carry deletion vectors is refused (Petastorm would return deleted rows).
    Row counts come from the log's file statistics, or from the Parquet footer when a writer left
    them out.
    """
    from deltalake.exceptions import DeltaError, TableNotFoundError
    if not log_exists(path):
        raise MissingTableError(f"no Delta table at {path}")
    try:
        table = open_log(path, version)
    except TableNotFoundError as e:
        raise MissingTableError(f"no Delta table at {path}: {e}") from None
    except DeltaError as e:
        raise MissingTableError(f"cannot list the files of the Delta table at {path} for a direct "
                                f"Parquet reader ({e}); tables read by Petastorm must not use "
                                f"deletion vectors") from None
    if "deletionVectors" in (table.protocol().reader_features or []):
        raise MissingTableError(f"the Delta table at {path} has deletion vectors enabled; Petastorm "
                                f"would return deleted rows: rewrite it without them")
    actions = table.get_add_actions(flatten=True)
    names = actions.schema.names
    paths = actions.column("path").to_pylist()

    def column(name: str) -> list:
        return actions.column(name).to_pylist() if name in names else [None] * len(paths)

    files = []
    for f, dt, n in zip(paths, column("partition.dt"), column("num_records")):
        if storage.is_remote(path):
            local = storage.object_path(path, f)
        else:
            local = _local_path(os.path.join(path, f))
        if n is None:
            n = storage.parquet_metadata(local).num_rows
        files.append((dt, SnapshotFile(local, int(n))))
    return LogSnapshot(int(table.version()), tuple(files))


def log_exists(path: str) -> bool:
    """Whether ``path`` holds a ``_delta_log`` directory, without a JVM (on S3: with the ``AWS_*``
    settings)."""
    return storage.is_dir(storage.join(storage.arrow_uri(path), "_delta_log"))


def open_log(path: str, version: int | None = None):
    """The Delta table at ``path`` (local or S3, either spelling) opened by delta-rs, at ``version`` or
    the latest one, with the ``AWS_*`` settings for S3."""
    from deltalake import DeltaTable
    return DeltaTable(storage.arrow_uri(path), version=version,
                      storage_options=storage.delta_storage_options(path))


def log_commit_metadata(path: str, version: int | None = None) -> list[tuple[int, dict]]:
    """``(version, userMetadata)`` of the commits up to ``version`` that recorded JSON metadata (our
    jobs' commits), oldest first, read from the log by delta-rs (no JVM)."""
    out = []
    for c in open_log(path, version).history():
        try:
            meta = json.loads(c.get("userMetadata") or "")
        except ValueError:
            continue
        if isinstance(meta, dict):
            out.append((int(c["version"]), meta))
    return sorted(out, key=lambda vm: vm[0])


def log_snapshot_files(path: str, first: str | None = None, last: str | None = None,
                       version: int | None = None) -> tuple[int, list[SnapshotFile], list[str]]:
    """(version, files whose ``dt`` is in ``first..last``, every ``dt`` of the snapshot): one
    :func:`log_snapshot` read."""
    snap = log_snapshot(path, version)
    return snap.version, snap.between(first, last), snap.dates


def _local_path(uri: str) -> str:
    from urllib.parse import unquote, urlparse
    u = urlparse(uri)
    if storage.is_remote(uri):
        return unquote(uri)  # an object key, URL-encoded once by Spark
    if u.scheme not in ("", "file"):
        return uri
    # Spark reports file paths URL-encoded, and partition directories (dt=...) may be encoded twice.
    path = unquote(u.path)
    while not os.path.exists(path) and unquote(path) != path:
        path = unquote(path)
    return path


def union_all(dfs: Iterable[DataFrame]) -> DataFrame:
    dfs = list(dfs)
    out = dfs[0]
    for d in dfs[1:]:
        out = out.unionByName(d, allowMissingColumns=True)
    return out




@contextlib.contextmanager
def commit_metadata(spark: SparkSession, meta: dict) -> Iterator[None]:
    """Tag every Delta commit made inside the block with ``meta`` as userMetadata (MERGE, OPTIMIZE,
    RESTORE have no writer option for it), so :func:`version_for_date` finds them like
    :func:`write_date` commits; a write that changes no file is committed too. Restores the session's
    previous settings on exit."""
    with session_conf(spark, {"spark.databricks.delta.commitInfo.userMetadata": json.dumps(meta, sort_keys=True),
                              **RECORD_EMPTY_COMMITS}):
        yield
