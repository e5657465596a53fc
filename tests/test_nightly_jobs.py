"""The nightly jobs as real ``spark-submit`` subprocesses on the generator's demo data, in one flow:

- locally: a kill in the middle of the UBT write (of a ``spark-submit`` job) leaves the previous
  version readable; the re-run skips the committed date and builds the killed one; the samples of both
  impression days follow (Delta resolved by ``spark-submit --packages``); a re-run of a committed date
  with another cap is refused, naming it. The re-run and the refused run go through the job's function
  and command-line ``main`` in the test session's JVM: what needs a JVM of its own is the kill and
  ``--packages``;
- the same jobs uninterrupted, in the test session's JVM, from the same logs (the session's tiny
  pipeline, ``conftest.tiny_pipeline``), give the same samples rows. (The jobs on a standalone
  cluster: test_cluster.)
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from conftest import ROOT, copy_lakehouse, run, spark_submit_cmd, subprocess_env
from helpers.events import FileEvents
from helpers.inprocess import session_settings_kept
from helpers.tiny_data import TINY_PIPELINE, TINY_SPARK_SETS
from sim.config import load_pipeline_conf
from sim.adapters.delta_io import job_commits, latest_version, read_table, version_for_date
from sim.samples.contract import SAMPLES_COLUMNS, with_sequence_arrays
from sim.ubt.settings import UBT_COLUMNS
from sim.ubt.transforms import aggregate_ubt, ubt_view
from sim.ubt.dates import retention_first_date
from sim.ubt.job import build_ubt
from test_ubt import rows_of

# spark-submit JVMs and the reference; the machine that runs them may be busy.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

# The session's tiny pipeline (8 users, 17 days of history, impressions on 06-30 and 07-01), its
# settings passed to every job; tiny data: few partitions, no query compilation (TINY_SPARK).
SETS = TINY_PIPELINE + ["spark.conf.spark.sql.shuffle.partitions=2"] + TINY_SPARK_SETS
CONF = load_pipeline_conf(overrides=SETS)
WINDOWS, CAPS = CONF.windows, CONF.caps


def job_args(lakehouse: Path, *args: str) -> list[str]:
    out = ["--lakehouse", str(lakehouse)]
    for s in SETS:
        out += ["--set", s]
    return out + list(args)


def submit(script: str, lakehouse: Path, *args: str, packages: bool = False) -> subprocess.CompletedProcess:
    cmd = spark_submit_cmd(str(ROOT / "jobs" / script), *job_args(lakehouse, *args), packages=packages)
    return run(cmd, timeout=900)


def _uncommitted_files(table: Path) -> list[str]:
    """Data files on disk that no commit of the Delta log references (left by a killed writer)."""
    referenced = set()
    for log in (table / "_delta_log").glob("*.json"):
        referenced |= {part.rsplit("/", 1)[-1] for part in log.read_text().split('"')
                       if part.endswith(".parquet")}
    return [p.name for p in table.rglob("*.parquet") if p.name not in referenced]


def test_nightly_jobs_killed_and_rerun_give_the_samples_of_an_uninterrupted_run(spark, tiny_pipeline, tmp_path,
                                                                            capfd, monkeypatch):
    # The logs and UBT(06-29) (full build) of the session's tiny pipeline, whose later stages ran
    # uninterrupted in the session's JVM: the reference of the rows the jobs below must give.
    lake = copy_lakehouse(tiny_pipeline.ubt_d0, tmp_path / "lakehouse", ("behaviors", "impressions", "ubt"))
    ubt = lake / "ubt"
    v_prev = latest_version(spark, str(ubt))
    rows_prev = rows_of(read_table(spark, str(ubt)).select(*UBT_COLUMNS))

    # Kill the nightly run for 06-30 (SIGKILL to its process group) once it writes new data files.
    # The kernel reports the first new data file (inotify): the kill lands when the write has begun.
    cmd = spark_submit_cmd(str(ROOT / "jobs" / "build_ubt.py"), *job_args(lake, "--date", "2024-06-30"))
    with FileEvents(ubt) as events:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            events.wait_for(lambda name: name.endswith(".parquet"), lambda: proc.poll() is None, 600)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, "the job finished before it was killed"
    assert _uncommitted_files(ubt), "killed before any data file of the merge was written"
    assert version_for_date(spark, str(ubt), "build_ubt", "2024-06-30") is None
    assert latest_version(spark, str(ubt)) == v_prev
    assert rows_of(read_table(spark, str(ubt)).select(*UBT_COLUMNS)) == rows_prev

    # The re-run (the job's function, in this JVM, on what the killed driver left) succeeds;
    # the committed 06-29 is skipped (unchanged), 06-30 equals a full rebuild.
    results = build_ubt(spark, str(lake), "2024-06-30", WINDOWS, CAPS, backfill_from="2024-06-29",
                        backfill_days=CONF.retention.backfill_days)
    assert [(r.date, r.action) for r in results] == [("2024-06-29", "skipped"), ("2024-06-30", "nightly")]
    assert [c.date for c in job_commits(spark, str(ubt), "build_ubt")] == ["2024-06-29", "2024-06-30"]
    beh = read_table(spark, str(lake / "behaviors")).where(
        (F.col("dt") >= retention_first_date(WINDOWS, "2024-06-30")) & (F.col("dt") <= "2024-06-30"))
    index = ubt_view(read_table(spark, str(ubt)), WINDOWS, "2024-06-30")
    assert rows_of(index) == rows_of(aggregate_ubt(beh))

    # Samples of both impression days, Delta resolved by spark-submit --packages. (Re-runs of a
    # committed samples date are covered in test_samples; the UBT re-run above skipped 06-29.)
    out = submit("build_samples.py", lake, "--date", "2024-07-01", "--backfill", "2024-06-30",
                 packages=True).stdout
    assert "date=2024-06-30 action=written" in out and "date=2024-07-01 action=written" in out
    # A re-run with another cap is refused, naming it and --force, and writes nothing: the job's
    # command line in this process, on the session (a job that ran on would stop it: fail instead).
    from sim.samples.cli import main as build_samples_main
    samples_version, cap = latest_version(spark, str(lake / "samples")), CAPS.long_cap
    monkeypatch.setattr(type(spark), "stop", lambda self: pytest.fail("the refused job ran on and stopped the session"))
    capfd.readouterr()
    with session_settings_kept(spark):
        status = build_samples_main(job_args(lake, "--date", "2024-07-01", "--set", f"caps.long_cap={cap + 1}"))
    said = capfd.readouterr().err
    assert status == 1 and f"caps.long_cap: built with {cap}, now {cap + 1}" in said and "--force" in said, said
    assert latest_version(spark, str(lake / "samples")) == samples_version
    samples = str(lake / "samples")
    assert [c.date for c in job_commits(spark, samples, "build_samples")] == ["2024-06-30", "2024-07-01"]
    s = read_table(spark, samples)
    imps = read_table(spark, str(lake / "impressions"))
    assert s.count() == imps.count() > 0
    assert tuple(s.columns) == SAMPLES_COLUMNS
    # Stored: the real elements only (the long sequence capped at caps.long_cap), fields aligned.
    arrays = with_sequence_arrays(s)
    wrong = arrays.where((F.size("short_items") != F.col("short_len")) | (F.size("short_gaps") != F.col("short_len"))
                         | (F.size("hard_gaps") != F.col("hard_len")) | (F.size("hard_cats") != F.col("hard_len"))
                         | (F.size("long_cats") != F.least(F.col("long_len"), F.lit(cap)))
                         | (F.size("long_items") != F.size("long_gaps")))
    assert wrong.count() == 0
    assert arrays.agg(F.max(F.size("long_items"))).first()[0] <= cap
    assert s.where("hard_len > 0").count() > 0 and s.where("long_len > 0").count() > 0

    # The same jobs uninterrupted, in the session's JVM (the tiny pipeline): the same samples rows.
    # (The jobs on a standalone cluster are test_cluster's: the demo flow on s3a://, a worker killed.)
    assert rows_of(read_table(spark, str(tiny_pipeline.full / "samples"))) == rows_of(s)


@pytest.mark.parametrize("module", ["sim.ubt.cli", "sim.samples.cli"])
def test_the_jobs_take_allow_empty(module, capsys):
    import importlib
    with pytest.raises(SystemExit) as done:
        importlib.import_module(module).main(["--help"])
    assert done.value.code == 0 and "--allow-empty" in capsys.readouterr().out
