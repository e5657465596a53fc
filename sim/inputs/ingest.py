"""Validate, count, then write: the load step shared by ``jobs/generate_logs.py`` and
``jobs/import_dataset.py`` (DESIGN.md "Nothing is silently dropped").

For each input the classified rows (:mod:`sim.inputs.validation`) are cached and counted by reason in one pass;
rows read (counted independently, from the input lines or the generator's own row count) must equal
accepted + rejected, and the reject ratio must stay under ``validation.max_reject_ratio`` -- both checked
*before* anything is written. Then behaviors, impressions and rejects are written with
:func:`sim.inputs.canonical.write_log_table` (idempotent, a fingerprint of inputs and options in the commit).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sim.inputs import GENERATOR_JOB, IMPORT_JOB_PREFIX, canonical
from sim.inputs.rejects import REJECTS_TABLE, write_rejects
from sim.inputs.canonical import (BEHAVIORS_TABLE, IMPRESSIONS_TABLE, date_range_predicate, to_behaviors,
                                  to_impressions, to_rejects, write_log_table)
from sim.inputs.generator.settings import ITEM_TOPICS_TABLE, GeneratorConfig
from sim.inputs.generator.impressions import auc_by_date, generate_impressions, item_topics
from sim.inputs.generator.behaviors import generate_behaviors, user_profiles
from sim.config import ConfigError
from sim.inputs.importers import (SAME_TIME, Protocol, import_inputs, order_same_time, protocol_impressions,
                                   users_below)
from sim.inputs.validation import (ValidationCounts, check_counts, classify_behaviors,
                                   classify_impressions, counts_of, enforce_reject_ratio, reason_counts,
                                   split)

log = logging.getLogger(__name__)


@dataclass
class CheckedInput:
    name: str
    classified: DataFrame  # persisted
    counts: ValidationCounts

    @property
    def accepted(self) -> DataFrame:
        return split(self.classified)[0]

    @property
    def rejects(self) -> DataFrame:
        return split(self.classified)[1]


def check_input(name: str, classified: DataFrame, read: int | None) -> CheckedInput:
    """Cache ``classified``, count it by reason and check read = accepted + rejected.

    ``read`` is the independent row count of the input (None: the classified rows themselves).
    """
    classified = classified.persist(StorageLevel.MEMORY_AND_DISK)
    by_reason = reason_counts(classified)
    counts = counts_of(sum(by_reason.values()) if read is None else read, by_reason)
    check_counts(counts.read, counts.accepted, counts.rejected, what=name)
    log.info("%s: %s", name, counts.summary())
    return CheckedInput(name, classified, counts)


def enforce_ratios(inputs: Sequence[CheckedInput], max_ratio: float) -> None:
    for i in inputs:
        enforce_reject_ratio(i.counts.rejected_by_reason, i.counts.read, max_ratio, what=i.name)


@dataclass
class IngestReport:
    job: str
    inputs: list[CheckedInput]
    written: dict[str, int] = field(default_factory=dict)  # rows per table
    dates: dict[str, tuple[str, str]] = field(default_factory=dict)  # table -> (first, last dt)
    committed: dict[str, bool] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)  # lines printed before the summary
    seconds: float = 0.0

    def summary(self) -> str:
        parts = [f"{self.job}:"]
        for t in (BEHAVIORS_TABLE, IMPRESSIONS_TABLE, REJECTS_TABLE, ITEM_TOPICS_TABLE):
            if t in self.written:
                rng = self.dates.get(t)
                skipped = "" if self.committed.get(t, True) else " (unchanged, skipped)"
                parts.append(f"{t}={self.written[t]}" + (f" [{rng[0]}..{rng[1]}]" if rng else "") + skipped)
        reads = "; ".join(f"{i.name} {i.counts.summary()}" for i in self.inputs)
        notes = " ".join(f"{k}={v}" for k, v in self.notes.items())
        return " ".join(parts) + f" | {reads}" + (f" | {notes}" if notes else "") + f" | {self.seconds:.1f}s"

    def release(self) -> None:
        for i in self.inputs:
            i.classified.unpersist()


def _write_all(lakehouse: str, job: str, fp: str, *, behaviors: DataFrame | None,
               behavior_dates: tuple[str, str] | None, impressions: DataFrame | None,
               impression_dates: tuple[str, str] | None, rejects: DataFrame, run_date: str,
               sources: Sequence[str], report: IngestReport, metadata: Mapping | None = None) -> None:
    # Rejects first, like every stage (sim.inputs.rejects): the data commits are what a re-run checks.
    report.committed[REJECTS_TABLE] = write_rejects(rejects.sparkSession, lakehouse,
                                                    to_rejects(rejects, run_date), run_date, sources,
                                                    n=sum(i.counts.rejected for i in report.inputs),
                                                    fingerprint=fp)
    report.dates[REJECTS_TABLE] = (run_date, run_date)
    logs = ((BEHAVIORS_TABLE, to_behaviors, behaviors, behavior_dates),
            (IMPRESSIONS_TABLE, to_impressions, impressions, impression_dates))
    for table, to_canonical, df, dates in logs:  # in this order: behaviors, then impressions
        if df is not None and dates:
            report.committed[table] = write_log_table(
                to_canonical(df), lakehouse, table, job=job, label=f"{dates[0]}..{dates[1]}",
                replace_where=date_range_predicate(*dates), fp=fp, extra_metadata=metadata)
            report.dates[table] = dates


def _union(dfs: Sequence[DataFrame]) -> DataFrame:
    out = dfs[0]
    for d in dfs[1:]:
        out = out.unionByName(d)
    return out


# Generator -----------------------------------------------------------------------------------------
def run_generator(spark: SparkSession, gc: GeneratorConfig, lakehouse: str, *, max_reject_ratio: float,
                  now_ts: int | None = None) -> IngestReport:
    """Generate, validate and write the synthetic logs of :mod:`sim.inputs.generator`."""
    start = time.time()
    now_ts = int(time.time()) if now_ts is None else now_ts
    fp = canonical.fingerprint({"generator": gc.model_dump()})
    job = GENERATOR_JOB
    first, last = gc.first_date, gc.end_date
    users = user_profiles(spark, gc).persist(StorageLevel.MEMORY_AND_DISK)
    stats = users.agg(F.sum("n_behaviors").alias("n"), F.max("n_behaviors").alias("max"),
                      F.count(F.lit(1)).alias("users")).first()
    beh = check_input("generator:behaviors",
                      classify_behaviors(generate_behaviors(users, gc), source="generator:behaviors",
                                         date_range=(first, last), now_ts=now_ts), int(stats["n"]))
    n_imp = gc.users * gc.impression_days * gc.impressions_per_user_day
    imp = check_input("generator:impressions",
                      classify_impressions(generate_impressions(users, beh.accepted, gc),
                                           source="generator:impressions",
                                           date_range=(gc.first_impression_date, last), now_ts=now_ts), n_imp)
    report = IngestReport(job, [beh, imp])
    enforce_ratios(report.inputs, max_reject_ratio)
    rejects = _union([beh.rejects, imp.rejects])
    _write_all(lakehouse, job, fp, behaviors=beh.accepted, behavior_dates=(first, last),
               impressions=imp.accepted, impression_dates=(gc.first_impression_date, last),
               rejects=rejects, run_date=last, sources=[beh.name, imp.name], report=report)
    report.written = {BEHAVIORS_TABLE: beh.counts.accepted, IMPRESSIONS_TABLE: imp.counts.accepted,
                      REJECTS_TABLE: beh.counts.rejected + imp.counts.rejected}
    report.notes = {"users": int(stats["users"]), "max_behaviors_per_user": int(stats["max"])}
    report.committed[ITEM_TOPICS_TABLE] = canonical.write_table(
        item_topics(spark, gc), lakehouse, ITEM_TOPICS_TABLE, job=job, label=last, fp=fp)
    report.written[ITEM_TOPICS_TABLE] = gc.items_per_category * gc.categories
    # The two oracles on the stored impressions: what a model can reach, with and without long-term terms.
    accepted_imp = imp.accepted
    oracle, short = auc_by_date(accepted_imp, "p_click"), auc_by_date(accepted_imp, "p_click_short")
    report.details = [f"oracle AUC {d}: p_click {oracle[d]:.4f}, p_click_short {short.get(d, float('nan')):.4f}"
                      for d in sorted(oracle)]
    users.unpersist()
    report.release()
    report.seconds = time.time() - start
    return report


# Importers -----------------------------------------------------------------------------------------
def input_fingerprint(paths: Sequence[str], options: Mapping) -> str:
    files = []
    for p in sorted(paths):
        st = os.stat(p)
        files.append((os.path.abspath(p), st.st_size, int(st.st_mtime)))
    return canonical.fingerprint({"files": files, "options": dict(options)})


def run_import(spark: SparkSession, fmt: str, inputs: str | Sequence[str], lakehouse: str, *,
               max_reject_ratio: float, date_range: tuple[str | None, str | None] = (None, None),
               seed: int = 7, protocol: Protocol | None = None, targets_per_user: int | None = None,
               same_time: str = "order", run_date: str | None = None,
               now_ts: int | None = None) -> IngestReport:
    """Import a public dataset (:mod:`sim.inputs.importers`), validate it and write the canonical tables.

    ``protocol`` picks the impressions (:class:`sim.inputs.importers.Protocol`; default: the last
    behavior of each user, ``targets_per_user`` a shortcut for the last-N mode); ``same_time``
    ``order`` gives a user's behaviors sharing a timestamp distinct seconds first
    (:mod:`sim.inputs.importers.same_time`), ``keep`` leaves the times as read. Both, with the seed,
    are recorded in the behaviors and impressions commits (userMetadata ``import``, see
    :func:`import_settings`) and in their fingerprint (with the input files).
    """
    start = time.time()
    now_ts = int(time.time()) if now_ts is None else now_ts
    if protocol is None:
        protocol = Protocol(mode="last", targets_per_user=targets_per_user or 1)
    elif targets_per_user is not None:
        raise ConfigError("give targets_per_user inside the protocol, not beside it")
    if same_time not in SAME_TIME:
        raise ConfigError(f"same_time {same_time!r} is not one of {', '.join(SAME_TIME)}")
    job = f"{IMPORT_JOB_PREFIX}{fmt}"
    ins = import_inputs(spark, fmt, inputs, date_range=date_range, now_ts=now_ts)
    checked = []
    if ins.items is not None:
        checked.append(check_input(ins.item_source, ins.items, sum(l.lines.count() for l in ins.item_lines)))
    beh = check_input(ins.behavior_source, ins.behaviors, sum(l.lines.count() for l in ins.behavior_lines))
    checked.append(beh)
    report = IngestReport(job, checked)
    enforce_ratios(checked, max_reject_ratio)
    accepted = beh.accepted
    if same_time == "order":
        # Read by the protocol's windows, the catalog, the touched pairs and the write: computed once.
        accepted = order_same_time(accepted).persist(StorageLevel.MEMORY_AND_DISK)
    rng = accepted.agg(F.min("dt").alias("a"), F.max("dt").alias("b")).first()
    behavior_dates = (rng["a"], rng["b"]) if rng["a"] else None
    impressions = protocol_impressions(accepted, protocol, seed=seed)
    impressions = impressions.persist(StorageLevel.MEMORY_AND_DISK)
    imp_stats = impressions.agg(F.count(F.lit(1)).alias("n"), F.sum("label").alias("pos"),
                                F.min("dt").alias("a"), F.max("dt").alias("b")).first()
    n_imp, n_pos = int(imp_stats["n"]), int(imp_stats["pos"] or 0)
    impression_dates = (imp_stats["a"], imp_stats["b"]) if n_imp else None
    run_date = run_date or (behavior_dates[1] if behavior_dates else time.strftime("%Y-%m-%d", time.gmtime()))
    paths = [l.path for l in ins.behavior_lines + ins.item_lines]
    settings = {"seed": seed, **import_settings(protocol, same_time)}
    fp = input_fingerprint(paths, {"fmt": fmt, "date_range": list(date_range), **settings, "run_date": run_date})
    rejects = _union([c.rejects for c in checked])
    _write_all(lakehouse, job, fp, behaviors=accepted, behavior_dates=behavior_dates,
               impressions=impressions.drop("target_rank"), impression_dates=impression_dates,
               rejects=rejects, run_date=run_date, sources=[c.name for c in checked], report=report,
               metadata={"import": settings})
    report.written = {BEHAVIORS_TABLE: beh.counts.accepted, IMPRESSIONS_TABLE: n_imp,
                      REJECTS_TABLE: sum(c.counts.rejected for c in checked)}
    n_neg = n_imp - n_pos
    report.notes = {"protocol": protocol.mode, "positives": n_pos, "negatives": n_neg,
                    "missing_negatives": n_pos * protocol.negatives_per_positive - n_neg}
    if protocol.min_user_behaviors > 1:
        report.notes["users_below_min_behaviors"] = users_below(accepted, protocol.min_user_behaviors)
    impressions.unpersist()
    if same_time == "order":
        accepted.unpersist()
    report.release()
    report.seconds = time.time() - start
    return report


def import_settings(protocol: Protocol, same_time: str) -> dict:
    """The options that decide an import's rows besides its inputs, seed and dates. ``attempts`` and
    ``targets_per_user`` keep the keys they always had."""
    s = protocol.settings()
    return {"protocol": s.pop("mode"), "attempts": s.pop("max_negative_attempts"), **s, "same_time": same_time}
