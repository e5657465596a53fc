"""What a job's commit records of its run, and the one re-run rule of every job.

A commit of our jobs records, beside ``{"job", "date"}`` (:mod:`sim.adapters.delta_io`):

- ``settings``: the settings its rows depend on, by their dotted config keys (``windows.long_days``);
- ``inputs``: what it read of each input, by table name: a Delta table's version and the data files
  holding the rows it selected (:class:`TableRead`), or the version of another job's date it built on
  (:func:`job_date_read`, e.g. UBT(D-1)): the lineage that says which data a date was built from;
- ``fingerprint``: a hash of the settings and of what identifies each input's rows (the files of a
  table read, the content version of a job's date), as the input jobs record for their input files
  and options (:mod:`sim.inputs.canonical`).

The rule (DESIGN.md "every nightly write is idempotent"): a re-run of a label is a no-op when its
newest commit has the fingerprint the run would have today. When it has another, the input jobs
replace their range (an import is its own source), while the jobs that derive tables from them (UBT,
samples) and the importer of a team's own logs by the day (:mod:`sim.inputs.own_logs`: its input is
the day's files, given as read in ``current``) refuse unless forced, naming each changed setting with its recorded and current value and
each changed input (:func:`run_changes`): a changed window or a re-imported day usually means more
than the one date must be rebuilt, and only the user knows which.

A job does not commit a date whose input is empty (:func:`empty_input` words the refusal): an empty
write would mark the date done, and the day's data landing later would be skipped as committed. A day
that genuinely had no rows is committed only when the user says so (``--allow-empty``).

Input versions are recorded for lineage, but a later version of an input table is not by itself a
change: the nightly import of the next day adds a version without touching the dates a commit read.
What is compared is the set of data files holding those dates' rows (Delta's files are immutable):
other files mean the dates were rewritten, by a re-import or by a compaction.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Mapping

from pyspark.sql import SparkSession

from sim.adapters.delta_io import Commit, is_delta_table, job_commits, latest_version, read_table

log = logging.getLogger(__name__)

_MISSING = object()


def fingerprint(obj: object) -> str:
    """A short stable hash of a JSON-able description of a write's settings and inputs (the same
    function as :func:`sim.inputs.canonical.fingerprint`)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TableRead:
    """What a job read of a Delta table: the version (read the rows there, with the same ``where``)
    and the names of the data files holding the rows of ``where`` in it (sorted)."""
    version: int
    where: str | None
    files: tuple[str, ...]

    @property
    def empty(self) -> bool:
        """No row matches ``where`` (Spark writes no data file for an empty partition)."""
        return not self.files

    def record(self) -> dict:
        return {"version": self.version, "where": self.where, "files": len(self.files),
                "digest": fingerprint(self.files)}


def table_read(spark: SparkSession, path: str, where: str | None = None,
               version: int | None = None) -> TableRead:
    """:class:`TableRead` of the Delta table at ``path`` at ``version`` (default: the latest), from the
    snapshot's file list pruned by the partition predicate ``where``: no data file is opened."""
    if version is None:
        version = latest_version(spark, path)
    df = read_table(spark, path, version)
    files = (df.where(where) if where else df).inputFiles()
    # By name: part files are named uniquely, and a copied lakehouse keeps them.
    return TableRead(int(version), where, tuple(sorted(f.rsplit("/", 1)[-1] for f in files)))


def job_date_read(spark: SparkSession, path: str, job: str, date: str,
                  commits: list[Commit] | None = None) -> dict | None:
    """What a run read of ``job``'s ``date`` on the table at ``path`` (the newest commit for it, as
    time travel reads it): its version and the version whose content it holds (a restore commit
    records the version it restored as ``restored_version``); None when no commit is found."""
    if commits is None:
        commits = job_commits(spark, path, job)
    mine = [c for c in commits if c.job == job and c.date == date]
    if not mine:
        return None
    c = max(mine, key=lambda c: c.version)
    return {"job": job, "date": date, "version": c.version,
            "content_version": int(c.metadata.get("restored_version", c.version))}


def _identity(read: Mapping) -> object:
    """What must be equal for an input to count as unchanged."""
    return read.get("digest", read.get("content_version"))


def run_record(settings: Mapping, inputs: Mapping[str, Mapping]) -> dict:
    """``settings``, ``inputs`` (table -> :meth:`TableRead.record` or :func:`job_date_read`) and their
    ``fingerprint``: what a job's commit records of its run, beside job and date."""
    return {"settings": dict(settings), "inputs": {k: dict(v) for k, v in inputs.items()},
            "fingerprint": fingerprint({"settings": dict(settings),
                                        "inputs": {k: _identity(v) for k, v in inputs.items()}})}


def run_changes(spark: SparkSession, meta: Mapping, settings: Mapping, paths: Mapping[str, str],
                current: Mapping[str, Mapping] | None = None) -> list[str] | None:
    """How a run with today's ``settings`` on today's inputs would differ from the one a commit
    recorded (``meta``): one line per changed setting (key, recorded value, current value) and per
    changed input (each recorded input read again as recorded, at ``paths[name]``, or given as read
    today in ``current``: an input that is no table of ours, e.g. a team's log files); empty when its
    fingerprint would be the same. None when the commit recorded no run (written before runs were
    recorded): nothing to compare."""
    if not isinstance(meta.get("settings"), dict):
        return None
    recorded = meta["settings"]
    lines = [f"{k}: built with {_show(recorded.get(k, _MISSING), 'not recorded')}, "
             f"now {_show(settings.get(k, _MISSING), 'not set')}"
             for k in sorted(set(recorded) | set(settings))
             if recorded.get(k, _MISSING) != settings.get(k, _MISSING)]
    now: dict[str, Mapping] = {}
    for name, read in (meta.get("inputs") or {}).items():
        if current is not None and name in current:
            now[name] = cur = current[name]
            if _identity(cur) != _identity(read):
                lines.append(f"{name}: {read.get('rows', '?')} rows read from {read.get('source', '?')} then, "
                             f"{cur.get('rows', '?')} rows from {cur.get('source', '?')} now, with other content")
            continue
        path = paths.get(name)
        if path is None or not is_delta_table(spark, path):
            lines.append(f"{name}: the table it was built from is gone ({path})")
            continue
        if "digest" in read:
            cur = table_read(spark, path, read.get("where"))
            now[name] = cur.record()
            if now[name]["digest"] != read["digest"]:
                lines.append(f"{name} ({read.get('where') or 'every row'}): built from version {read['version']} "
                             f"({read['files']} files); version {cur.version} holds those rows in other files "
                             f"({len(cur.files)}): they were rewritten since (a re-import, or a compaction)")
        elif "job" in read:
            cur = job_date_read(spark, path, read["job"], read["date"])
            if cur is None:  # its commit left the log: nothing says it changed
                log.info("%s %s is no longer in the log of %s: not compared", read["job"], read["date"], path)
                cur = read
            now[name] = cur
            if _identity(cur) != _identity(read):
                lines.append(f"{name}: built on {read['job']} {read['date']} (version {read['version']}), "
                             f"which is now version {cur['version']}: rebuilt since")
        else:
            now[name] = read
    if not lines and run_record(settings, now)["fingerprint"] != meta.get("fingerprint"):
        lines.append("the fingerprint of its settings and inputs differs")  # a key this code does not know
    return lines


def rerun_refusal(spark: SparkSession, done: Commit, settings: Mapping, paths: Mapping[str, str],
                  what: str, rebuild: str) -> str | None:
    """The refusal of a run of ``what`` (e.g. ``UBT(2024-06-30)``), committed as ``done``, when today's
    run would differ (:func:`run_changes`): each change, that nothing was written, and ``rebuild`` (how
    to force it); None when it would not. A commit that recorded no run is not compared: a warning."""
    changes = run_changes(spark, done.metadata, settings, paths)
    if changes is None:
        log.warning("%s: committed (version %s) before runs recorded their settings and inputs; not "
                    "compared with this run's (--force rebuilds it and records them)", what, done.version)
        return None
    if not changes:
        return None
    return (f"{what} is committed (version {done.version}) with other settings or inputs than this run's:\n  "
            + "\n  ".join(changes) + f"\nNothing was written. {rebuild}, or run with the settings it was "
            "built with")


def _show(value: object, missing: str) -> str:
    return f"({missing})" if value is _MISSING else repr(value)


def empty_input(table: str, label: str, where: str, path: str, version: int, building: str) -> str:
    """The refusal of a job whose input ``table`` has no rows for ``label`` (``where``)."""
    return (f"{table} has no rows for {label} ({where} in {path}, version {version}): {building} not built, "
            f"nothing committed. Load the data first (jobs/import_logs.py for your own logs, "
            f"jobs/import_dataset.py, or jobs/generate_logs.py for synthetic logs) and run again; if {label} genuinely had no {table}, run with --allow-empty")
