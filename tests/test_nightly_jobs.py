"""The nightly jobs as real ``spark-submit`` subprocesses on the generator's demo data, in one flow:

- locally: a kill in the middle of the UBT write leaves the previous version readable; the re-run
  skips the committed date and builds the killed one; the samples of both impression days follow
  (Delta resolved by ``spark-submit --packages``); a re-run of a committed date with another cap is
  refused, naming it;
- the same jobs uninterrupted, in the test session's JVM, from the same logs, give the same samples
  rows. (The jobs on a standalone cluster: test_cluster.)
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from conftest import ROOT, run, spark_submit_cmd, subprocess_env
from sim.adapters.delta_io import job_commits, latest_version, read_table, version_for_date
from sim.samples.contract import SAMPLES_COLUMNS, with_sequence_arrays
from sim.ubt.settings import UBT_COLUMNS, Caps, Windows
from sim.ubt.transforms import aggregate_ubt, ubt_view
from sim.ubt.dates import retention_first_date
from test_ubt import rows_of

# spark-submit JVMs and the reference; the machine that runs them may be busy.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

# Demo data small enough for two cores: 20 days of history, impressions on 06-30 and 07-01.
SETS = ["generator.users=16", "generator.history_days=20", "generator.impression_days=2",
        "generator.mean_behaviors_per_user=40", "generator.max_behaviors_per_user=400",
        "generator.heavy_users=1", "generator.impressions_per_user_day=3", "generator.items=2000",
        "generator.categories=20", "generator.topics=4", "validation.max_reject_ratio=0.5",
        "windows.long_days=10", "windows.short_days=3",
        "caps.long_cap=40", "caps.hard_k=20", "caps.short_cap=10",
        "spark.conf.spark.sql.shuffle.partitions=2", "spark.conf.spark.databricks.delta.snapshotPartitions=2",
        "spark.conf.spark.sql.codegen.wholeStage=false"]  # tiny data: no whole-stage code generation
WINDOWS = Windows(long_days=10, short_days=3)
CAPS = Caps(short_cap=10, hard_k=20, long_cap=40)


def job_args(lakehouse: Path, *args: str) -> list[str]:
    out = ["--lakehouse", str(lakehouse)]
    for s in SETS:
        out += ["--set", s]
    return out + list(args)


def submit(script: str, lakehouse: Path, *args: str, packages: bool = False) -> subprocess.CompletedProcess:
    cmd = spark_submit_cmd(str(ROOT / "jobs" / script), *job_args(lakehouse, *args), packages=packages)
    return run(cmd, timeout=900)


@pytest.fixture(scope="module")
def demo_logs(spark, tmp_path_factory) -> Path:
    """behaviors + impressions written by the data layer's generator (in this session's JVM; its CLI
    has its own tests)."""
    from sim.config import load_pipeline_conf
    from sim.inputs.ingest import run_generator
    lake = tmp_path_factory.mktemp("demo") / "lakehouse"
    cfg = load_pipeline_conf(overrides=SETS)
    run_generator(spark, cfg.generator, str(lake), max_reject_ratio=0.5)
    assert (lake / "behaviors" / "_delta_log").is_dir() and (lake / "impressions" / "_delta_log").is_dir()
    return lake


def _copy_logs(src: Path, dst: Path) -> Path:
    for t in ("behaviors", "impressions"):
        shutil.copytree(src / t, dst / t)
    return dst


def _uncommitted_files(table: Path) -> list[str]:
    """Data files on disk that no commit of the Delta log references (left by a killed writer)."""
    referenced = set()
    for log in (table / "_delta_log").glob("*.json"):
        referenced |= {part.rsplit("/", 1)[-1] for part in log.read_text().split('"')
                       if part.endswith(".parquet")}
    return [p.name for p in table.rglob("*.parquet") if p.name not in referenced]


def test_nightly_jobs_killed_and_rerun_give_the_samples_of_an_uninterrupted_run(spark, demo_logs, tmp_path):
    lake = _copy_logs(demo_logs, tmp_path / "lakehouse")
    reference = _copy_logs(demo_logs, tmp_path / "reference" / "lakehouse")
    ubt = lake / "ubt"
    from sim.ubt.job import build_ubt
    build_ubt(spark, str(lake), "2024-06-29", WINDOWS, CAPS, backfill_from="2024-06-29")  # full build
    v_prev = latest_version(spark, str(ubt))
    rows_prev = rows_of(read_table(spark, str(ubt)).select(*UBT_COLUMNS))

    # Kill the nightly run for 06-30 (SIGKILL to its process group) once it writes new data files.
    existing = {p.name for p in ubt.rglob("*.parquet")}
    cmd = spark_submit_cmd(str(ROOT / "jobs" / "build_ubt.py"), *job_args(lake, "--date", "2024-06-30"))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            if {p.name for p in ubt.rglob("*.parquet")} - existing:
                break
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, "the job finished before it was killed"
    assert _uncommitted_files(ubt), "killed before any data file of the merge was written"
    assert version_for_date(spark, str(ubt), "build_ubt", "2024-06-30") is None
    assert latest_version(spark, str(ubt)) == v_prev
    assert rows_of(read_table(spark, str(ubt)).select(*UBT_COLUMNS)) == rows_prev

    # The re-run succeeds; the committed 06-29 is skipped (unchanged), 06-30 equals a full rebuild.
    out = submit("build_ubt.py", lake, "--date", "2024-06-30", "--backfill", "2024-06-29").stdout
    assert "2024-06-29:skipped, 2024-06-30:nightly" in out
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
    # A re-run with another cap is refused, naming it and --force, and writes nothing.
    samples_version = latest_version(spark, str(lake / "samples"))
    refused = run(spark_submit_cmd(str(ROOT / "jobs" / "build_samples.py"),
                                   *job_args(lake, "--date", "2024-07-01", "--set", "caps.long_cap=41")),
                  check=False)
    said = refused.stdout + refused.stderr  # spark-submit merges the driver's stderr into its stdout
    assert refused.returncode == 1 and "caps.long_cap: built with 40, now 41" in said and "--force" in said, said
    assert latest_version(spark, str(lake / "samples")) == samples_version
    samples = str(lake / "samples")
    assert [c.date for c in job_commits(spark, samples, "build_samples")] == ["2024-06-30", "2024-07-01"]
    s = read_table(spark, samples)
    imps = read_table(spark, str(lake / "impressions"))
    assert s.count() == imps.count() > 0
    assert tuple(s.columns) == SAMPLES_COLUMNS
    # Stored: the real elements only (the long sequence capped at caps.long_cap = 40), fields aligned.
    arrays = with_sequence_arrays(s)
    wrong = arrays.where((F.size("short_items") != F.col("short_len")) | (F.size("short_gaps") != F.col("short_len"))
                         | (F.size("hard_gaps") != F.col("hard_len")) | (F.size("hard_cats") != F.col("hard_len"))
                         | (F.size("long_cats") != F.least(F.col("long_len"), F.lit(40)))
                         | (F.size("long_items") != F.size("long_gaps")))
    assert wrong.count() == 0
    assert arrays.agg(F.max(F.size("long_items"))).first()[0] <= 40
    assert s.where("hard_len > 0").count() > 0 and s.where("long_len > 0").count() > 0

    # The same jobs uninterrupted, in this session's JVM: the same samples rows. (The jobs on a
    # standalone cluster are test_cluster's: the demo flow on s3a://, a worker killed mid-stage.)
    from sim.config import load_pipeline_conf
    from sim.samples.contract import SampleSpec
    from sim.samples.job import build_samples
    build_ubt(spark, str(reference), "2024-06-30", WINDOWS, CAPS, backfill_from="2024-06-29")
    spec = SampleSpec.from_conf(load_pipeline_conf(overrides=SETS))
    assert [build_samples(spark, str(reference), d, spec).action for d in ("2024-06-30", "2024-07-01")] \
        == ["written", "written"]
    assert rows_of(read_table(spark, str(reference / "samples"))) == rows_of(s)


@pytest.mark.parametrize("module", ["sim.ubt.cli", "sim.samples.cli"])
def test_the_jobs_take_allow_empty(module, capsys):
    import importlib
    with pytest.raises(SystemExit) as done:
        importlib.import_module(module).main(["--help"])
    assert done.value.code == 0 and "--allow-empty" in capsys.readouterr().out
