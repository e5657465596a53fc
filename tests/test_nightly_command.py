"""The one nightly command (sim.nightly, jobs/nightly.py): the import of D when configured, UBT(D),
samples(D), the export of UBT(D) into the serving store when configured, in one Spark session; it stops
at the first stage that fails with that stage's exit status, and run again once the cause is fixed it
resumes there, the stages done before skipped.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT, copy_lakehouse

DATA = ROOT / "tests" / "data" / "own_logs"


def _config(lake: Path, store: Path | None = None):
    from helpers.tiny_data import TINY_PIPELINE
    from sim.config import PipelineConfig, load_pipeline_conf
    raw = load_pipeline_conf(overrides=TINY_PIPELINE).model_dump()
    behaviors = {"location": str(DATA / "{date}" / "behaviors.csv"), "ts_unit": "ms",
                 "map": {"user_id": "uid", "item_id": "item", "category_id": "cat", "behavior_type": "action",
                         "ts": "event_time_ms"}}
    nightly = {"import": {"behaviors": behaviors}, "export": {"store": str(store)} if store else False}
    return PipelineConfig.parse({**raw, "lakehouse": str(lake), "nightly": nightly})


@pytest.mark.slow  # the tiny pipeline, as the other tests of the nightly jobs
def test_the_night_stops_at_a_failed_stage_with_its_status_and_resumes_there(spark, tiny_pipeline, tmp_path):
    """The tiny pipeline's logs and UBT up to 06-30; the night of 07-01 imports that day's behaviors from
    tests/data/own_logs, builds UBT(07-01), and its samples fail while the impressions of 07-01 are
    missing (exit 12, naming the table); with them back, the same command skips the import and the UBT,
    writes the samples, and its export fails while the store's directory cannot be made (exit 13, naming
    the store); with the way clear it skips every stage but the export, which switches the store to
    UBT(07-01); once more, every stage is skipped; with ``nightly.export: false`` the export is off."""
    from delta.tables import DeltaTable

    from helpers.tiny_data import TINY_DATES
    from sim.adapters.delta_io import version_for_date
    from sim.config import PipelineConfig
    from sim.nightly import EXIT_STATUS, exit_status, run_nightly
    from sim.serving.store import SqliteStore
    date = TINY_DATES[1]
    lake = copy_lakehouse(tiny_pipeline.full, tmp_path / "lake", ("behaviors", "impressions", "rejects", "ubt"))
    blocker = tmp_path / "serving"
    blocker.write_text("a file where the store's directory goes")
    store = blocker / "ubt.sqlite"
    cfg = _config(lake, store)
    impressions = DeltaTable.forPath(spark, str(lake / "impressions"))
    before = impressions.history(1).first().version
    n_impressions = spark.read.format("delta").load(str(lake / "impressions")).where(f"dt = '{date}'").count()
    impressions.delete(f"dt = '{date}'")

    assert (EXIT_STATUS["samples"], EXIT_STATUS["export"]) == (12, 13)
    lines: list[str] = []

    def night(cfg) -> tuple[list[tuple[str, str]], int]:
        lines.clear()
        results = run_nightly(spark, cfg, date, report=lambda r: lines.append(r.line(date)))
        return [(r.stage, r.status) for r in results], exit_status(results)

    assert night(cfg) == ([("import", "written"), ("ubt", "written"), ("samples", "failed"),
                           ("export", "not run")], 12), lines
    assert len(lines) == 4 and lines[2].startswith(f"nightly {date} samples: failed (exit 12) impressions has no "
                                                   f"rows for {date}"), lines
    assert lines[0].startswith(f"nightly {date} import: written behaviors=27"), lines
    assert not (lake / "samples").exists()

    impressions.restoreToVersion(before)  # the day's impressions landed
    assert night(cfg) == ([("import", "skipped"), ("ubt", "skipped"), ("samples", "written"),
                           ("export", "failed")], 13), lines
    assert lines[3].startswith(f"nightly {date} export: failed (exit 13) the serving store {store} "
                               f"(nightly.export.store) cannot be written"), lines
    samples = spark.read.format("delta").load(str(lake / "samples")).where(f"dt = '{date}'").count()
    assert samples == n_impressions > 0

    blocker.unlink()  # the store's directory can be made
    assert night(cfg) == ([("import", "skipped"), ("ubt", "skipped"), ("samples", "skipped"),
                           ("export", "written")], 0), lines
    current = SqliteStore(store).current()
    ubt_version = version_for_date(spark, str(lake / "ubt"), "build_ubt", date)
    assert (current.date, current.meta["ubt_version"]) == (date, ubt_version), current
    assert lines[3].startswith(f"nightly {date} export: written UBT({date}) version={ubt_version} -> sqlite "
                               f"store {store} generation={current.generation} users="), lines

    assert night(cfg) == ([(s, "skipped") for s in ("import", "ubt", "samples", "export")], 0), lines
    assert SqliteStore(store).current().generation == current.generation  # nothing exported again

    off = PipelineConfig.parse({**cfg.model_dump(), "nightly": {**cfg.nightly.model_dump(), "export": False}})
    assert night(off) == ([("import", "skipped"), ("ubt", "skipped"), ("samples", "skipped"), ("export", "off")],
                          0), lines
    assert lines[3].startswith(f"nightly {date} export: off (nightly.export not set)"), lines


def test_a_failed_stage_leaves_the_later_ones_not_run(spark, tmp_path):
    """An empty lakehouse without the import configured: the import is off, the UBT fails naming the
    missing behaviors table (exit 11), the samples are not run."""
    from sim.config import load_pipeline_conf
    from sim.nightly import exit_status, run_nightly
    cfg = load_pipeline_conf(overrides=[f"lakehouse={tmp_path / 'lake'}"])
    results = run_nightly(spark, cfg, "2024-07-01")
    assert [(r.stage, r.status) for r in results] == [("import", "off"), ("ubt", "failed"), ("samples", "not run"),
                                                      ("export", "not run")]
    assert f"no Delta table at {tmp_path / 'lake' / 'ubt'}" in results[1].detail, results[1].detail
    assert exit_status(results) == 11
    assert results[1].line("2024-07-01").startswith("nightly 2024-07-01 ubt: failed (exit 11) no Delta table at")


@pytest.mark.slow  # a JVM of its own
def test_the_command_exits_with_the_failed_stage_status(tmp_path):
    """What a scheduler sees of ``jobs/nightly.py``: one line per stage on stdout, the failed stage's exit
    status."""
    import sys

    from conftest import run
    lake = tmp_path / "lake"
    proc = run([sys.executable, "jobs/nightly.py", "--date", "2024-07-01", "--lakehouse", str(lake),
                "--set", "spark.conf.spark.driver.memory=1g"], check=False, timeout=600)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 11, proc.stdout + proc.stderr[-4000:]
    assert [line.split(":")[0] for line in lines] == [f"nightly 2024-07-01 {s}"
                                                      for s in ("import", "ubt", "samples", "export")]
    assert lines[1].startswith(f"nightly 2024-07-01 ubt: failed (exit 11) no Delta table at {lake / 'ubt'}"), lines
    assert lines[2:] == ["nightly 2024-07-01 samples: not run", "nightly 2024-07-01 export: not run"], lines
    assert "stopped at ubt; fix the cause and run the same command again" in proc.stderr
