"""The whole pipeline as a user runs it, on a tiny synthetic log: the console scripts of the venv
(``sim-generate-logs``, ``sim-build-ubt``, ``sim-build-samples``), then ``python -m sim.train --np 2``
(horovodrun, two ranks) and ``python -m sim.compare`` on the run it tracked.

Each stage is checked against the tables it read and wrote (read here with delta-rs, no JVM):
the generator's reported counts are the rows of its tables and its re-run with the same config
commits nothing (this is the generator CLI's test; the README's jobs block runs it too); UBT(D) holds
exactly the behaviors of its window; every impression of a samples date is either a samples row or a
reject of build_samples; the run read those samples rows, its logged ``auc`` is sklearn's AUC of its
logged test predictions, and the comparison prints that AUC for the model.
"""
from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import ROOT, VENV_BIN, run
from helpers.readme import SHORT_JVM_OPTS

# Five processes of a cold JVM or two ranks each; the machine that runs the tests may be busy.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

USERS, IMPRESSION_DAYS, PER_USER_DAY = 60, 3, 4
END = "2024-07-01"
UBT_FROM, UBT_TO = "2024-06-28", "2024-06-30"     # UBT(D-1) for the samples of D
DATES = ["2024-06-29", "2024-06-30", "2024-07-01"]  # impression days: train, valid, test
LONG_DAYS = 10
EXPID, EXPERIMENT = "sim_soft_time", "sim-synthetic"
JOB_SETS = [f"generator.users={USERS}", "generator.history_days=20", f"generator.end_date={END}",
            f"generator.impression_days={IMPRESSION_DAYS}",
            f"generator.impressions_per_user_day={PER_USER_DAY}", "generator.mean_behaviors_per_user=40",
            "generator.max_behaviors_per_user=200", "generator.heavy_users=1", "generator.items=2000",
            "generator.categories=20", "generator.topics=4", "validation.max_reject_ratio=0.5",
            f"windows.long_days={LONG_DAYS}", "windows.short_days=3",
            "caps.long_cap=40", "caps.hard_k=20", "caps.short_cap=10",
            "spark.conf.spark.driver.memory=1g", "spark.conf.spark.sql.codegen.wholeStage=false",
            "spark.conf.spark.sql.shuffle.partitions=1",
            "spark.conf.spark.databricks.delta.snapshotPartitions=1"]
TRAIN_SETS = ["model.emb_dim=4", "model.category_buckets=101", "model.mlp_dims=[32,16]", "model.soft_k=5",
              "train.epochs=1", "train.batch_size=64", "train.eval_batch_size=128", "train.threads=1",
              f"train_dates=[{DATES[0]},{DATES[0]}]", f"valid_dates=[{DATES[1]},{DATES[1]}]",
              f"test_dates=[{DATES[2]},{DATES[2]}]"]


def _sets(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


def _job(script: str, lake: Path, *args: str) -> str:
    """A job's console script, as a user runs it; its stdout."""
    cmd = [str(VENV_BIN / script), "--lakehouse", str(lake), *_sets(JOB_SETS), *args]
    return run(cmd, timeout=1800, SPARK_SUBMIT_OPTS=SHORT_JVM_OPTS).stdout


def _table(lake: Path, name: str, columns: list[str] | None = None):
    from deltalake import DeltaTable
    return DeltaTable(str(lake / name)).to_pandas(columns=columns)


LOG_TABLES = ("behaviors", "impressions", "rejects", "item_topics")


def _versions(lake: Path) -> dict[str, int]:
    from deltalake import DeltaTable
    return {t: DeltaTable(str(lake / t)).version() for t in LOG_TABLES}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict:
    """Every stage run once, in order; the outputs the tests read."""
    work = tmp_path_factory.mktemp("e2e")
    lake, uri = work / "lakehouse", f"sqlite:///{work / 'mlflow.db'}"
    out = {"lake": lake, "uri": uri}
    out["generate"] = _job("sim-generate-logs", lake)
    out["versions"] = _versions(lake)
    out["generate_again"] = _job("sim-generate-logs", lake)  # same config: a no-op
    out["ubt"] = _job("sim-build-ubt", lake, "--date", UBT_TO, "--backfill", UBT_FROM)
    out["samples"] = _job("sim-build-samples", lake, "--date", DATES[-1], "--backfill", DATES[0])
    run([sys.executable, "-m", "sim.train", "--config", str(ROOT / "conf" / "experiments.yaml"),
         "--expid", EXPID, "--np", "2",
         *_sets(TRAIN_SETS + [f"lakehouse={lake}", f"tracking_uri={uri}",
                              f"train.checkpoint_dir={work / 'checkpoints'}"])], timeout=1800)
    out["compare"] = run([sys.executable, "-m", "sim.compare", "--experiment", EXPERIMENT,
                          "--tracking-uri", uri, "--out", str(work / "compare_out")], timeout=600).stdout
    return out


def test_generator_reports_the_rows_of_its_tables(pipeline):
    lake = pipeline["lake"]
    line = pipeline["generate"].strip().splitlines()[-1]
    m = re.match(r"generate_logs: behaviors=(\d+) \[(\S+)\.\.(\S+)\] impressions=(\d+) \[(\S+)\.\.(\S+)\] "
                 r"rejects=(\d+) ", line)
    assert m, line
    n_beh, n_imp, n_rej = int(m.group(1)), int(m.group(4)), int(m.group(7))
    assert (m.group(3), m.group(5), m.group(6)) == (END, DATES[0], END)
    read, accepted, rejected = map(int, re.search(
        r"generator:behaviors read=(\d+) accepted=(\d+) rejected=(\d+)", line).groups())
    assert read == accepted + rejected and accepted == n_beh
    assert n_imp == USERS * IMPRESSION_DAYS * PER_USER_DAY
    beh, imp = _table(lake, "behaviors", ["user_id", "dt"]), _table(lake, "impressions", ["dt"])
    rej = _table(lake, "rejects", ["source"])
    assert len(beh) == n_beh and beh.user_id.nunique() == USERS
    assert imp.dt.value_counts().to_dict() == {d: USERS * PER_USER_DAY for d in DATES}
    assert rej.source.str.startswith("generator:").sum() == n_rej


def test_generator_rerun_with_the_same_config_writes_nothing(pipeline):
    first = pipeline["generate"].strip().splitlines()[-1]
    again = pipeline["generate_again"].strip().splitlines()[-1]
    assert again.count("(unchanged, skipped)") == len(LOG_TABLES), again
    assert again.split("|")[1] == first.split("|")[1]  # the same counts read
    assert pipeline["versions"] == _versions(pipeline["lake"])  # and no commit


def test_ubt_holds_exactly_the_behaviors_of_its_window(pipeline):
    """UBT(UBT_TO): its segment rows, cut to the window (the oldest segment may hold older days), are
    the behaviors of the LONG_DAYS dates up to UBT_TO, one for one; so it covers their users."""
    import datetime as dt
    lake = pipeline["lake"]
    assert re.search(rf"BUILD_UBT_OK date={UBT_TO} .*days=3 .*\[{UBT_FROM}:full, 2024-06-29:nightly, "
                     rf"{UBT_TO}:nightly\]", pipeline["ubt"]), pipeline["ubt"]
    first = (dt.date.fromisoformat(UBT_TO) - dt.timedelta(days=LONG_DAYS - 1)).isoformat()
    start = int(dt.datetime.fromisoformat(first).replace(tzinfo=dt.timezone.utc).timestamp())
    beh = _table(lake, "behaviors", ["user_id", "category_id", "item_id", "ts", "dt"])
    window = beh[(beh.dt >= first) & (beh.dt <= UBT_TO)]
    ubt = _table(lake, "ubt", ["user_id", "category_id", "behaviors"])
    held = Counter((r.user_id, r.category_id, b["item_id"], b["ts"])
                   for r in ubt.itertuples() for b in r.behaviors if b["ts"] >= start)
    assert len(window) > 0 and sum(held.values()) == len(window)
    assert held == Counter(zip(window.user_id, window.category_id, window.item_id, window.ts))
    assert set(ubt.user_id) >= set(window.user_id) and set(ubt.user_id) <= set(beh.user_id)


def test_every_impression_becomes_a_sample_or_a_reject(pipeline):
    lake = pipeline["lake"]
    reported = {m.group(1): (int(m.group(2)), int(m.group(3))) for m in re.finditer(
        r"BUILD_SAMPLES_OK date=(\S+) action=written .* samples=(\d+) rejected=(\d+)", pipeline["samples"])}
    assert sorted(reported) == DATES, pipeline["samples"]
    imp = _table(lake, "impressions", ["impression_id", "dt"])
    samples = _table(lake, "samples", ["impression_id", "dt", "long_len"])
    rej = _table(lake, "rejects", ["source", "dt"])
    for d in DATES:
        n_samples, n_rejected = reported[d]
        ids = set(samples.impression_id[samples.dt == d])
        assert len(ids) == (samples.dt == d).sum() == n_samples > 0, d
        assert ((rej.source == "build_samples") & (rej.dt == d)).sum() == n_rejected, d
        assert (imp.dt == d).sum() == n_samples + n_rejected, d
        assert ids <= set(imp.impression_id[imp.dt == d]), d
    assert (samples.long_len > 0).any()  # the UBT's history reached the samples


def test_logged_auc_recomputes_from_the_logged_predictions(pipeline):
    import pandas as pd
    from mlflow.tracking import MlflowClient
    from sklearn.metrics import roc_auc_score
    client = MlflowClient(tracking_uri=pipeline["uri"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == EXPID]
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED" and r.data.params["horovod.size"] == "2"
    samples = _table(pipeline["lake"], "samples", ["impression_id", "dt"])
    for split, d in zip(("train", "valid", "test"), DATES):
        assert int(r.data.params[f"data.{split}_rows"]) == (samples.dt == d).sum(), split
    path = client.download_artifacts(r.info.run_id, "test_predictions.parquet",
                                      str(pipeline["lake"].parent))
    pred = pd.read_parquet(path)
    test_ids = samples.impression_id[samples.dt == DATES[2]]
    assert len(pred) == len(test_ids) and set(pred.impression_id) == set(test_ids)  # each row once
    assert 0 < pred.label.sum() < len(pred)
    assert r.data.metrics["auc"] == pytest.approx(roc_auc_score(pred.label, pred.score), abs=1e-9)


def test_compare_prints_the_run_auc_for_the_model(pipeline):
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=pipeline["uri"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    (r,) = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == EXPID]
    auc = r.data.metrics["auc"]
    rows = [line for line in pipeline["compare"].splitlines() if line.startswith(EXPID + " ")]
    assert rows, pipeline["compare"]
    assert re.match(rf"{EXPID}\s+{auc:.4f} ± 0\.0000 \(n=1\)$", rows[0]), rows[0]


def test_a_model_that_does_not_fit_the_samples_is_refused_before_training(pipeline):
    """Each samples commit records the sizes it was built with; a model whose time-gap table is smaller
    than the samples' bucket ids (an index error at the first step, once) is refused before horovodrun."""
    proc = run([sys.executable, "-m", "sim.train", "--config", str(ROOT / "conf" / "experiments.yaml"),
                "--expid", EXPID, "--np", "2",
                *_sets(TRAIN_SETS + [f"lakehouse={pipeline['lake']}", "model.time_gap_buckets=8"])],
               check=False, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "model.time_gap_buckets=8 but the samples hold time-gap bucket ids up to 63" in proc.stderr
    assert "launching" not in proc.stderr
