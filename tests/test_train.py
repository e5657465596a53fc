"""Training end to end: horovodrun over Petastorm shards of a Delta samples snapshot, MLflow tracking,
checkpoint / resume, and configuration errors that stop before any worker starts."""
from __future__ import annotations

import sys

import pandas as pd
import pytest

from conftest import ROOT, run
from helpers.samples_table import write_samples
from sim.adapters import delta_io, tracking
from sim.training.metrics import auc

TRAIN_DATES = ["2024-03-01", "2024-03-02"]
VALID_DATE = "2024-03-03"
EVAL_DATE = "2024-03-04"  # the test date: the reported figures
SMALL = ["model.emb_dim=4", "model.item_buckets=1009", "model.category_buckets=101",
         "model.mlp_dims=[32,16]", "model.soft_k=5", "train.batch_size=64", "train.eval_batch_size=128",
         "train.threads=1", f"train_dates=[{TRAIN_DATES[0]},{TRAIN_DATES[1]}]",
         f"valid_dates=[{VALID_DATE},{VALID_DATE}]", f"test_dates=[{EVAL_DATE},{EVAL_DATE}]"]


@pytest.fixture(scope="module")
def lakehouse(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("lakehouse")
    path = delta_io.table_path(str(root), "samples")
    write_samples(spark, path, TRAIN_DATES + [VALID_DATE, EVAL_DATE], 300)
    # A forced rewrite of the eval date leaves the old files on disk; training must never read them.
    write_samples(spark, path, [EVAL_DATE], 250, seed=7, force=True)
    eval_ids = {r.impression_id for r in delta_io.read_table(spark, path).where(f"dt = '{EVAL_DATE}'")
                .select("impression_id").collect()}
    return root, eval_ids, delta_io.latest_version(spark, path)


def train_cmd(expid: str, root, tmp_path, *extra: str, np_: int = 0) -> list[str]:
    cmd = [sys.executable, "-m", "sim.train", "--config", str(ROOT / "conf/experiments.yaml"),
           "--expid", expid]
    sets = SMALL + [f"lakehouse={root}", f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                    f"train.checkpoint_dir={tmp_path / 'ckpt'}", *extra]
    for s in sets:
        cmd += ["--set", s]
    if np_:
        cmd += ["--np", str(np_)]
    return cmd


@pytest.mark.slow
def test_horovodrun_two_ranks_identical_weights_and_tracked_auc(lakehouse, tmp_path):
    import torch
    lakehouse, eval_ids, version = lakehouse
    dump = tmp_path / "weights"
    run(train_cmd("sim_soft_time", lakehouse, tmp_path, "train.epochs=2", np_=2), timeout=900,
        SIM_DUMP_WEIGHTS=str(dump))
    w0, w1 = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    runs = tracking.search_runs(["sim-synthetic"], uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(runs) == 1
    r = runs.iloc[0]
    assert r.status == "FINISHED"
    assert r["params.horovod.size"] == "2"
    assert r["params.data.steps_per_epoch"] == "5"  # 600 train rows: 300 per rank, batches of 64
    assert r["params.data.samples_version"] == str(version)
    pred = pd.read_parquet(tracking.download_artifact(r.run_id, "test_predictions.parquet",
                                                      uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert len(pred) == 250 and set(pred.impression_id) == eval_ids  # every eval row once, across ranks
    assert r["metrics.auc"] == pytest.approx(auc(pred.label, pred.score), abs=1e-12)
    history = dict(tracking.metric_history(r.run_id, "val_auc", uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert sorted(history) == [1, 2]
    losses = dict(tracking.metric_history(r.run_id, "train_loss", uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert losses[2] < losses[1]  # every row once per epoch, and the model learns from them
    # The reported test AUC is that of the epoch with the best validation AUC.
    assert r["metrics.best_epoch"] == max(history, key=lambda e: (history[e], -e))
    assert r["metrics.best_val_auc"] == pytest.approx(max(history.values()))
    # Soft search logs its diagnostics per epoch.
    for name in ("gsu_auc", "topk_same_category", "hard_soft_overlap"):
        assert 0.0 <= r[f"metrics.{name}"] <= 1.0, name
    # The logged model loads back and scores the eval rows as the run did.
    import mlflow.pytorch
    from sim.adapters import petastorm_io
    from sim.samples.contract import TRAINING_COLUMNS
    from sim.training.experiment import _to_tensors
    model = mlflow.pytorch.load_model(f"runs:/{r.run_id}/model")
    # Batches are padded to their longest row: the signature's sequences take any length.
    inputs = {s.name: s.shape for s in mlflow.models.get_model_info(f"runs:/{r.run_id}/model").signature.inputs.inputs}
    assert inputs["long_items"] == (-1, -1) and inputs["item_id"] == (-1,), inputs
    files = [f.path for f in delta_io.log_snapshot_files(str(lakehouse / "samples"), EVAL_DATE, EVAL_DATE)[1]]
    with torch.no_grad(), petastorm_io.open_reader(files, list(TRAINING_COLUMNS)) as reader:
        batch = next(petastorm_io.iter_batches(reader, list(TRAINING_COLUMNS), 32))
        scores = torch.sigmoid(model.eval()(_to_tensors(batch))["logit"]).double().numpy()
    logged = pred.set_index("impression_id").score
    assert scores == pytest.approx(logged.loc[batch["impression_id"]].to_numpy(), abs=1e-6)


@pytest.mark.slow
def test_resume_after_crash_matches_uninterrupted_run(lakehouse, tmp_path):
    lakehouse = lakehouse[0]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    full = tmp_path / "full"
    run(train_cmd("sim_hard", lakehouse, full, "train.epochs=2", f"tracking_uri={uri}"))
    crashed = tmp_path / "crashed"
    proc = run(train_cmd("sim_hard", lakehouse, crashed, "train.epochs=2", "train.fail_after_epoch=1",
                         f"tracking_uri={uri}"), check=False)
    assert proc.returncode != 0 and "fault injected after epoch 1" in proc.stderr
    assert (crashed / "ckpt").exists()
    runs = tracking.search_runs(["sim-synthetic"], uri=uri)
    assert sorted(runs.status) == ["FAILED", "FINISHED"]
    run(train_cmd("sim_hard", lakehouse, crashed, "train.epochs=2", f"tracking_uri={uri}") + ["--resume"])
    runs = tracking.search_runs(["sim-synthetic"], uri=uri).set_index("run_id")
    assert len(runs) == 2  # the resumed run continued the crashed run
    assert sorted(runs.status) == ["FINISHED", "FINISHED"]
    a, b = runs["metrics.auc"].to_numpy()
    assert a == pytest.approx(b, abs=1e-6)
    la, lb = runs["metrics.final_weight_checksum"].to_numpy()
    assert la == pytest.approx(lb, rel=1e-5)


@pytest.mark.parametrize("extra, message", [
    (["model.name=transformer"], "unknown model 'transformer'; known models: din"),
    (["train_dates=[2024-03-02,2024-03-01]"], "first date 2024-03-02 is after last date 2024-03-01"),
    (["train_dates=[2023-01-01,2023-01-02]"], "no samples for train_dates 2023-01-01..2023-01-02"),
    ([f"valid_dates=[{EVAL_DATE},{EVAL_DATE}]"], "valid_dates 2024-03-04..2024-03-04 must end before test_dates"),
    (["eval_dates=[2024-03-03,2024-03-03]"], "eval_dates is split into valid_dates"),
    (["lakehouse=/nonexistent/lakehouse"], "no Delta table at /nonexistent/lakehouse/samples"),
])
def test_bad_config_fails_before_any_worker_starts(lakehouse, tmp_path, extra, message):
    lakehouse = lakehouse[0]
    cmd = train_cmd("din", lakehouse, tmp_path, *extra, np_=2)
    proc = run(cmd, check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert "launching: " not in proc.stderr  # horovodrun never started


def test_unknown_expid_lists_known_ones(tmp_path):
    proc = run([sys.executable, "-m", "sim.train", "--config", str(ROOT / "conf/experiments.yaml"),
                "--expid", "nope"], check=False)
    assert proc.returncode == 2 and "unknown expid 'nope'" in proc.stderr and "sim_soft_time" in proc.stderr


def test_checkpoints_are_keyed_by_run():
    """Two seeds or two settings of one expid get their own checkpoint directory; what --resume may
    change (the epoch budget) keeps it."""
    from sim.training.experiment import load_experiment
    from sim.training.loop import checkpoint_dir
    conf = ROOT / "conf/experiments.yaml"
    base = checkpoint_dir(load_experiment(conf, "sim_hard", ["train.seed=1"]))
    assert base.parent.name == "sim_hard"
    assert checkpoint_dir(load_experiment(conf, "sim_hard", ["train.seed=2"])) != base
    assert checkpoint_dir(load_experiment(conf, "sim_hard", ["train.seed=1", "train.lr=0.01"])) != base
    assert checkpoint_dir(load_experiment(conf, "sim_hard", ["train.seed=1", "train.epochs=9"])) == base
