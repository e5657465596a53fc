"""What makes two training runs comparable, worked out by rank 0 before the first epoch and logged as the
run's ``comparison.*`` params; :mod:`sim.reporting.compare` averages runs over seeds only where all of
them agree:

- ``comparison.dataset``: the data, named from the lakehouse's own records (not from a label in the
  config): the samples commits that wrote the run's dates record the ``impressions`` version they read
  (:mod:`sim.adapters.lineage`), and that table's commits record the job that wrote those dates:
  ``synthetic`` for the generator (``generate_logs``), the importer's format (``movielens``, ``taobao``,
  ``amazon``) for ``import_dataset``, ``unknown`` when the samples commits record no input (tables written
  before inputs were recorded, or by other writers);
- ``comparison.data_hash``: the split dates, the settings the samples commits record (windows, caps,
  time-gap buckets and sizes) and what identifies their input data (the input job's fingerprint: the
  generator's whole config, or the import's files and options, with the import's protocol settings);
- ``comparison.samples_versions``: the versions of the samples commits whose rows the run reads (the
  newest commit of each of its dates; a later commit of other dates leaves them unchanged; dates no
  commit of ours names count as the snapshot's version);
- ``comparison.model_hash`` and ``comparison.train_hash``: the ``model`` block, and the ``train`` block
  less what does not change the result (:data:`RESULT_FREE_TRAIN_KEYS`: the seed is what runs are averaged
  over; threads, paths, read-ahead, device, the evaluation batch and fault injection do not decide the
  figures);
- ``comparison.processes``: the Horovod processes (``train.batch_size`` is per process, so the number of
  processes changes the batches: :func:`sim.training.optim.lr_schedule`).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
from typing import Any, Mapping

from sim.config.experiment import SPLITS, date_range
from sim.inputs import GENERATOR_JOB, IMPORT_JOB_PREFIX, LOGS_JOB

log = logging.getLogger("sim.train")

# train.* keys that do not change a run's figures (the seed is what comparisons average over).
RESULT_FREE_TRAIN_KEYS = ("seed", "checkpoint_dir", "threads", "loader_workers", "device", "eval_batch_size",
                          "fail_after_epoch")
# The inputs a samples commit records whose writer names the data (sim.samples.job: run_record).
SOURCE_TABLES = ("impressions", "behaviors")
UNKNOWN = "unknown"


def digest(obj: Any) -> str:
    """A short stable hash of a JSON-able value (10 hex digits: shown in the comparison's keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def train_settings(train: Mapping[str, Any]) -> dict:
    """The ``train`` block less :data:`RESULT_FREE_TRAIN_KEYS`."""
    return {k: v for k, v in train.items() if k not in RESULT_FREE_TRAIN_KEYS}


def _span(meta: Mapping) -> tuple[str, str] | None:
    """(first, last) date a commit wrote: its ``from``..``to``, or its ``date`` label (one date, or a
    ``first..last`` range as the input jobs label theirs); None for a commit that names no date."""
    if "from" in meta and "to" in meta:
        return str(meta["from"]), str(meta["to"])
    label = meta.get("date")
    if not isinstance(label, str):
        return None
    first, _, last = label.partition("..")
    return first, last or first


def _days(first: str, last: str) -> list[str]:
    a, b = _dt.date.fromisoformat(first), _dt.date.fromisoformat(last)
    return [(a + _dt.timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


def _newest_covering(commits: list[tuple[int, dict]], day: str) -> tuple[int, dict] | None:
    """The newest of ``commits`` (oldest first) whose span holds ``day``."""
    for version, meta in reversed(commits):
        span = _span(meta)
        if span and span[0] <= day <= span[1]:
            return version, meta
    return None


def data_source(job: str | None) -> str:
    """The dataset an input commit's job names: ``synthetic`` (the generator), the importer's format,
    else ``unknown``."""
    if job == GENERATOR_JOB:
        return "synthetic"
    if job and job.startswith(IMPORT_JOB_PREFIX):
        return job[len(IMPORT_JOB_PREFIX):]
    if job == LOGS_JOB:
        return "own logs"
    return UNKNOWN


def _input_identity(meta: Mapping) -> dict:
    """What identifies an input commit's rows: its job, fingerprint and import settings."""
    return {k: meta[k] for k in ("job", "fingerprint", "import") if k in meta}


def _distinct(items: list[dict]) -> list[dict]:
    """``items`` without repeats, in a stable order."""
    return [json.loads(x) for x in sorted({json.dumps(i, sort_keys=True, default=str) for i in items})]


class _InputLogs:
    """The commit metadata of the input tables at the versions samples commits read, each read once."""

    def __init__(self, lakehouse: str):
        self.lakehouse = lakehouse
        self._logs: dict[tuple[str, int], list[tuple[int, dict]]] = {}

    def commits(self, table: str, version: int) -> list[tuple[int, dict]]:
        from sim.adapters import delta_io
        key = (table, version)
        if key not in self._logs:
            path = delta_io.table_path(self.lakehouse, table)
            try:
                self._logs[key] = delta_io.log_commit_metadata(path, version)
            except Exception as e:  # the input table is gone or cannot be read: its source is unknown
                log.warning("the commits of %s (version %s) cannot be read: %s", path, version, e)
                self._logs[key] = []
        return self._logs[key]


def comparison_params(cfg: Mapping[str, Any], samples_path: str, snapshot_version: int,
                      processes: int) -> dict[str, Any]:
    """The ``comparison.*`` params of a run of ``cfg`` on the samples snapshot ``snapshot_version`` of
    ``samples_path`` with ``processes`` Horovod processes (module docstring)."""
    from sim.adapters import delta_io
    samples_commits = [(v, m) for v, m in delta_io.log_commit_metadata(samples_path, snapshot_version)
                       if _span(m)]
    dates = {s: list(date_range(dict(cfg), s)) for s in SPLITS}
    per_day: dict[int, dict] = {}
    unrecorded_days = 0
    for first, last in dates.values():
        for day in _days(first, last):
            hit = _newest_covering(samples_commits, day)
            if hit is None:
                unrecorded_days += 1
            else:
                per_day[hit[0]] = hit[1]
    inputs = _InputLogs(str(cfg["lakehouse"]))
    names, sources, samples_settings = set(), [], []
    for version, meta in sorted(per_day.items()):
        samples_settings.append({k: meta.get(k) for k in ("settings", "sizes")})
        span = _span(meta)
        recorded = meta.get("inputs") if isinstance(meta.get("inputs"), dict) else {}
        for table in SOURCE_TABLES:
            read = recorded.get(table)
            if not isinstance(read, dict) or "version" not in read:
                if table == SOURCE_TABLES[0]:
                    names.add(UNKNOWN)
                continue
            # The input commit that wrote the samples commit's last date at the version it read.
            hit = _newest_covering(inputs.commits(table, int(read["version"])), span[1])
            identity = _input_identity(hit[1]) if hit else {}
            sources.append({"table": table, **identity})
            if table == SOURCE_TABLES[0]:
                names.add(data_source(identity.get("job")))
    if unrecorded_days or not per_day:
        names.add(UNKNOWN)
    # One name, or the names of every source joined (dates built from two sources).
    dataset = "+".join(sorted(names - {UNKNOWN}) + ([UNKNOWN] if UNKNOWN in names else []))
    # Dates no commit names (written by other writers): the snapshot's version stands for them.
    versions = set(per_day) | ({snapshot_version} if unrecorded_days else set())
    return {"dataset": dataset,
            "data_hash": digest({"dates": dates, "samples": _distinct(samples_settings),
                                 "sources": _distinct(sources)}),
            "samples_versions": ",".join(str(v) for v in sorted(versions)),
            "model_hash": digest(dict(cfg["model"])),
            "train_hash": digest(train_settings(cfg["train"])),
            "processes": int(processes)}
