"""Training end to end: horovodrun over Petastorm shards of a Delta samples snapshot, MLflow tracking,
checkpoint / resume, and configuration errors that stop before any worker starts."""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, run
from helpers.inprocess import call_main
from helpers.samples_table import write_samples
from sim.adapters import delta_io, tracking
from sim.training.metrics import auc
from test_reference import write_candidate_behaviors

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
    write_candidate_behaviors(spark, root)  # for the item-popularity and gradient-boosting references
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


def train_main(cmd: list[str], capfd) -> tuple[int | None, str]:
    """``python -m sim.train ...`` (a :func:`train_cmd`) as ``sim.train.main`` in this process: for what it
    refuses before any worker starts (the exit status is main's return value, ``sys.exit(main())``)."""
    from sim.train import main
    assert cmd[1:3] == ["-m", "sim.train"], cmd
    return call_main(main, cmd[3:], capfd)


@pytest.fixture(scope="module")
def two_ranks(lakehouse, mlflow_server, tmp_path_factory) -> dict:
    """sim_soft_time trained for 2 epochs by ``sim.train --np 2`` (horovodrun, two ranks), tracked on a
    real MLflow server over HTTP; every rank dumps its final weights."""
    root, eval_ids, version = lakehouse
    work = tmp_path_factory.mktemp("two_ranks")
    run(train_cmd("sim_soft_time", root, work, "train.epochs=2", f"tracking_uri={mlflow_server}", np_=2),
        timeout=900, SIM_DUMP_WEIGHTS=str(work / "weights"))
    runs = tracking.search_runs(["sim-synthetic"], uri=mlflow_server)
    assert len(runs) == 1
    r = runs.iloc[0]
    pred = pd.read_parquet(tracking.download_artifact(r.run_id, "test_predictions.parquet", uri=mlflow_server))
    return {"root": root, "eval_ids": eval_ids, "version": version, "work": work, "uri": mlflow_server,
            "run": r, "pred": pred}


def _eval_rows(root, n: int = 32) -> pd.DataFrame:
    """The first ``n`` rows of the test date's first file as a user sends them: the samples columns,
    sequences as lists of ids (their real elements: the table stores no padding)."""
    import pyarrow.parquet as pq
    from sim.samples.contract import TRAINING_COLUMNS
    from sim.formats.packing import unpack_frame
    path = delta_io.log_snapshot_files(str(root / "samples"), EVAL_DATE, EVAL_DATE)[1][0].path
    frame = unpack_frame(pq.read_table(path, columns=list(TRAINING_COLUMNS)).slice(0, n).to_pandas())
    for c in frame.columns:
        if frame[c].dtype == object:
            frame[c] = frame[c].map(lambda a: a.tolist())
    return frame


@pytest.mark.slow
def test_horovodrun_two_ranks_identical_weights_and_tracked_auc(two_ranks):
    import torch
    w0, w1 = (torch.load(two_ranks["work"] / "weights" / f"rank{i}.pt") for i in (0, 1))
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    r, pred, uri = two_ranks["run"], two_ranks["pred"], two_ranks["uri"]
    assert uri.startswith("http://") and r.status == "FINISHED"
    assert r["params.horovod.size"] == "2"
    assert r["params.train.device"] == "auto"
    if not torch.cuda.is_available():  # the resolved device
        assert (r["params.device.type"], r["params.device.gradients"]) == ("cpu", "cpu")
    assert r["params.data.steps_per_epoch"] == "5"  # 600 train rows: 300 per rank, batches of 64
    assert r["params.data.samples_version"] == str(two_ranks["version"])
    # batch_size is per process: a step of the two ranks averages 2 x 64 rows, the rate unscaled.
    assert (r["params.schedule.processes"], r["params.schedule.global_batch_size"]) == ("2", "128")
    assert r["params.schedule.lr_rule"] == "lr * 0.9 ** (optimizer_step / 1000)"
    # What sim.compare groups by: samples written without recording their inputs name no dataset.
    assert (r["params.comparison.processes"], r["params.comparison.dataset"]) == ("2", "unknown")
    assert len(pred) == 250 and set(pred.impression_id) == two_ranks["eval_ids"]  # every eval row once
    assert r["metrics.auc"] == pytest.approx(auc(pred.label, pred.score), abs=1e-12)
    history = dict(tracking.metric_history(r.run_id, "val_auc", uri=uri))
    assert sorted(history) == [1, 2]
    losses = dict(tracking.metric_history(r.run_id, "train_loss", uri=uri))
    assert losses[2] < losses[1]  # every row once per epoch, and the model learns from them
    # The reported test AUC is that of the epoch with the best validation AUC.
    assert r["metrics.best_epoch"] == max(history, key=lambda e: (history[e], -e))
    assert r["metrics.best_val_auc"] == pytest.approx(max(history.values()))
    # Soft search logs its diagnostics per epoch.
    for name in ("gsu_auc", "topk_same_category", "hard_soft_overlap"):
        assert 0.0 <= r[f"metrics.{name}"] <= 1.0, name
    # The reference rows of the test impressions, gradient boosting and the test rows' statistics among them.
    for name in ("popularity_auc", "gbdt_auc", "hard_nonempty_share"):
        assert 0.0 <= r[f"metrics.{name}"] <= 1.0, name
    assert r["metrics.long_len_median"] >= 0


@pytest.mark.slow
def test_logged_model_loads_as_pyfunc_and_scores_rows_as_the_run_did(two_ranks):
    """The model is a pyfunc over samples rows with a signature and an input example."""
    import mlflow
    from mlflow.models import Model
    mlflow.set_tracking_uri(two_ranks["uri"])
    uri = two_ranks["run"]["tags.model_uri"]
    assert uri.startswith("models:/")
    info = Model.load(uri)
    assert info.signature is not None and "long_items" in info.signature.inputs.input_names()
    assert info.saved_input_example_info is not None
    rows = _eval_rows(two_ranks["root"])
    scores = mlflow.pyfunc.load_model(uri).predict(rows)
    logged = two_ranks["pred"].set_index("impression_id").score
    assert np.asarray(scores) == pytest.approx(logged.loc[rows.impression_id].to_numpy(), abs=1e-6)


@pytest.mark.slow
def test_run_artifacts_are_objects_of_the_s3_bucket(two_ranks, s3_server):
    """The tracking server keeps its artifacts on the object store (``--artifacts-destination
    s3://...``): the run's predictions and the logged model's files are objects of the bucket, listed
    through the S3 API, uploaded by the server (the training process talks only HTTP to it)."""
    from pyarrow import fs
    from conftest import MLFLOW_PREFIX
    from sim.adapters import storage
    s3 = storage.arrow_filesystem(s3_server.env)
    objects = {i.path.removeprefix(f"{s3_server.bucket}/{MLFLOW_PREFIX}/"): i.size for i in
               s3.get_file_info(fs.FileSelector(f"{s3_server.bucket}/{MLFLOW_PREFIX}", recursive=True))
               if i.type == fs.FileType.File}
    run_id, model_id = two_ranks["run"].run_id, two_ranks["run"]["tags.model_uri"].removeprefix("models:/")
    (pred,) = [k for k in objects if k.endswith(f"/{run_id}/artifacts/test_predictions.parquet")]
    assert objects[pred] > 0
    model_files = {k.rsplit("/", 1)[-1]: v for k, v in objects.items() if f"/models/{model_id}/artifacts/" in k}
    assert {"MLmodel", "input_example.json", "python_model.pkl"} <= set(model_files), sorted(model_files)
    # the pickled torch module (the pyfunc's "torch_model" artifact) and the sim package beside it
    assert any(k.endswith("/model.pt") for k in objects if f"/models/{model_id}/" in k), sorted(objects)
    assert any("/code/sim/" in k for k in objects if f"/models/{model_id}/" in k), sorted(objects)
    # The same bytes the server hands back over HTTP.
    local = tracking.download_artifact(run_id, "test_predictions.parquet", uri=two_ranks["uri"])
    with s3.open_input_file(f"{s3_server.bucket}/{MLFLOW_PREFIX}/{pred}") as f:
        assert f.read() == open(local, "rb").read()


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_logged_scores(two_ranks, tmp_path):
    """`mlflow models serve` of the run's model, a real HTTP endpoint on 127.0.0.1."""
    from conftest import VENV_BIN, free_port, subprocess_env
    from helpers.servers import post_json, server
    port = free_port()
    cmd = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", two_ranks["run"]["tags.model_uri"],
           "-h", "127.0.0.1", "-p", str(port), "--env-manager", "local", "-w", "1"]
    rows = _eval_rows(two_ranks["root"], 16)
    body = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
    with server(cmd, f"http://127.0.0.1:{port}", tmp_path / "serve.log", cwd=tmp_path, ready="/ping",
                env=subprocess_env(MLFLOW_TRACKING_URI=two_ranks["uri"])) as url:
        answer = post_json(url + "/invocations", body)
    logged = two_ranks["pred"].set_index("impression_id").score
    assert answer["predictions"] == pytest.approx(logged.loc[rows.impression_id].tolist(), abs=1e-6)


def test_unreachable_tracking_server_fails_before_training(lakehouse, tmp_path, capfd):
    from conftest import free_port
    dead = f"http://127.0.0.1:{free_port()}"
    status, err = train_main(train_cmd("din", lakehouse[0], tmp_path, f"tracking_uri={dead}", np_=2), capfd)
    assert status == 2, err[-2000:]
    assert f"no MLflow tracking server answers at {dead}" in err
    assert "launching: " not in err


@pytest.mark.slow
def test_resume_after_crash_matches_uninterrupted_run_on_the_version_it_started_on(spark, lakehouse, tmp_path):
    """A run crashes after epoch 1 and the samples table then gets a new commit (a train date rebuilt
    with other rows): --resume finishes the run on the version it started on, with the weights of an
    uninterrupted run on that version, and its MLflow run names that version."""
    root = tmp_path / "lakehouse"
    shutil.copytree(lakehouse[0], root)  # the module's table stays as the other tests expect it
    version = lakehouse[2]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    full = tmp_path / "full"
    run(train_cmd("sim_hard", root, full, "train.epochs=2", f"tracking_uri={uri}"))
    crashed = tmp_path / "crashed"
    proc = run(train_cmd("sim_hard", root, crashed, "train.epochs=2", f"tracking_uri={uri}"), check=False,
               SIM_CRASH_AT="train.epoch_1_checkpointed")
    assert proc.returncode != 0 and "crash injected at train.epoch_1_checkpointed" in proc.stderr
    assert (crashed / "ckpt").exists()
    runs = tracking.search_runs(["sim-synthetic"], uri=uri)
    assert sorted(runs.status) == ["FAILED", "FINISHED"]
    write_samples(spark, str(root / "samples"), [TRAIN_DATES[1]], 300, seed=11, force=True)
    assert delta_io.latest_version(spark, str(root / "samples")) == version + 1
    proc = run(train_cmd("sim_hard", root, crashed, "train.epochs=2", f"tracking_uri={uri}") + ["--resume"])
    runs = tracking.search_runs(["sim-synthetic"], uri=uri).set_index("run_id")
    assert len(runs) == 2  # the resumed run continued the crashed run
    assert sorted(runs.status) == ["FINISHED", "FINISHED"]
    la, lb = runs["metrics.final_weight_checksum"].to_numpy()
    assert la == pytest.approx(lb, rel=1e-5)  # epoch 2 trained on the rows of the version it started on
    a, b = runs["metrics.auc"].to_numpy()
    assert a == pytest.approx(b, abs=1e-6)
    assert (runs["params.data.samples_version"] == str(version)).all()
    resumed = runs[runs["tags.resumed_at_epoch"] == "1"]
    assert len(resumed) == 1 and resumed["tags.samples_version"].item() == str(version)
    assert (f"resuming on samples version {version} of {root / 'samples'}, the version this run started on; "
            f"the table is now at version {version + 1}") in proc.stderr


def test_resume_refuses_without_a_checkpoint_or_a_readable_version(lakehouse, tmp_path):
    """What --resume reads before any worker starts (the launcher's and the single process's data):
    the samples version its checkpoint recorded; none without a checkpoint, and a version the log can no
    longer give is refused with both versions named."""
    from sim.config import ConfigError
    from sim.training.experiment import DataManifest, load_experiment, resolve_data
    from sim.training.loop import MANIFEST_FILE, checkpoint_dir, resume_manifest
    root, _, version = lakehouse
    cfg = load_experiment(ROOT / "conf/experiments.yaml", "din",
                          SMALL + [f"lakehouse={root}", f"train.checkpoint_dir={tmp_path / 'ckpt'}"])
    with pytest.raises(ConfigError, match="--resume given but no checkpoint in .*: start the run without --resume"):
        resume_manifest(cfg)
    ckpt = checkpoint_dir(cfg)
    ckpt.mkdir(parents=True)
    (ckpt / "last.pt").write_bytes(b"")
    recorded = resolve_data(cfg)
    (ckpt / MANIFEST_FILE).write_text(recorded.to_json())
    assert resume_manifest(cfg) == recorded
    gone = DataManifest(recorded.samples_path, version + 5, recorded.files)  # a version the log does not hold
    (ckpt / MANIFEST_FILE).write_text(gone.to_json())
    with pytest.raises(ConfigError, match=rf"trained on samples version {version + 5} of .*the table is at "
                                          rf"version {version}: start a new run on version {version} without --resume"):
        resume_manifest(cfg)


@pytest.mark.parametrize("extra, message", [
    (["model.name=transformer"], "unknown model 'transformer'; known models: din"),
    (["train_dates=[2024-03-02,2024-03-01]"], "first date 2024-03-02 is after last date 2024-03-01"),
    (["train_dates=[2023-01-01,2023-01-02]"], "no samples for train_dates 2023-01-01..2023-01-02"),
    ([f"valid_dates=[{EVAL_DATE},{EVAL_DATE}]"], "valid_dates 2024-03-04..2024-03-04 must end before test_dates"),
    (["eval_dates=[2024-03-03,2024-03-03]"], "eval_dates is split into valid_dates"),
    (["lakehouse=/nonexistent/lakehouse"], "no Delta table at /nonexistent/lakehouse/samples"),
    (["train.device=gpu"], "train.device: Input should be 'auto', 'cpu' or 'cuda' (got 'gpu')"),
    pytest.param(["train.device=cuda"], "train.device=cuda but", id="cuda-without-gpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
])
def test_bad_config_fails_before_any_worker_starts(lakehouse, tmp_path, extra, message, capfd):
    status, err = train_main(train_cmd("din", lakehouse[0], tmp_path, *extra, np_=2), capfd)
    assert status == 2, err[-2000:]
    assert message in err
    assert "launching: " not in err  # horovodrun never started


def test_unknown_expid_lists_known_ones(capfd):
    status, err = train_main([sys.executable, "-m", "sim.train", "--config", str(ROOT / "conf/experiments.yaml"),
                              "--expid", "nope"], capfd)
    assert status == 2 and "unknown expid 'nope'" in err and "sim_soft_time" in err


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


def test_the_per_process_batch_and_learning_rate_rule():
    """``train.batch_size`` is per process: with N processes a step averages N batches. ``lr_scaling``
    none keeps lr and counts the decay in optimizer steps; linear (Horovod's rule) warms up from lr to
    lr * N and counts the decay in batches of batch_size rows; with one process both are today's rule."""
    from sim.config.experiment import load_experiment
    from sim.training.optim import lr_schedule
    t = load_experiment(ROOT / "conf/experiments.yaml", "din")["train"]
    rate, steps = t["lr_decay_rate"], t["lr_decay_steps"]
    assert t["lr_scaling"] == "none"  # the default: runs train as they always did
    for scaling in ("none", "linear"):
        one = lr_schedule({**t, "lr_scaling": scaling}, 1, steps_per_epoch=50)
        assert [one.factor(s) for s in range(0, 3000, 7)] == [rate ** (s / steps) for s in range(0, 3000, 7)]
    none2 = lr_schedule(t, 2, steps_per_epoch=50)
    assert none2.factor(500) == rate ** (500 / steps)
    linear2 = lr_schedule({**t, "lr_scaling": "linear", "lr_warmup_epochs": 2}, 2, steps_per_epoch=50)
    assert linear2.factor(0) == 1.0  # the warm-up starts at lr
    assert linear2.factor(50) == pytest.approx(1.5 * rate ** (100 / steps))
    assert linear2.factor(500) == pytest.approx(2 * rate ** (1000 / steps))  # lr * 2, decayed by rows
    recorded = linear2.params(t)
    assert (recorded["processes"], recorded["global_batch_size"], recorded["lr_peak"]) == (2, 2 * t["batch_size"],
                                                                                           2 * t["lr"])
    assert none2.params(t)["lr_peak"] == t["lr"] and none2.params(t)["global_batch_size"] == 2 * t["batch_size"]


def test_one_process_trains_alike_under_either_lr_scaling_and_records_the_rule(lakehouse, tmp_path):
    """In this process (Horovod size 1): ``lr_scaling`` linear trains exactly the weights of none, and
    the run records the processes, the global batch and the rate rule it trained with."""
    from sim.training.experiment import load_experiment
    from sim.training.loop import train
    root, _, _ = lakehouse
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = {}
    for scaling in ("none", "linear"):
        cfg = load_experiment(ROOT / "conf/experiments.yaml", "din",
                              [*SMALL, f"lakehouse={root}", f"tracking_uri={uri}", "train.epochs=2",
                               f"train.checkpoint_dir={tmp_path / scaling}", f"train.lr_scaling={scaling}",
                               "train.loader_workers=1", f"experiment=scaling-{scaling}"])
        train(cfg)
        (r,) = [r for _, r in tracking.search_runs([f"scaling-{scaling}"], uri=uri).iterrows()]
        runs[scaling] = r
    none, linear = runs["none"], runs["linear"]
    assert none["params.schedule.processes"] == "1" and none["params.schedule.global_batch_size"] == "64"
    assert none["params.schedule.lr_peak"] == linear["params.schedule.lr_peak"] == "0.004"
    assert none["params.schedule.lr_rule"] == "lr * 0.9 ** (optimizer_step / 1000)"
    assert linear["params.schedule.lr_scaling"] == "linear"
    assert linear["metrics.final_weight_checksum"] == none["metrics.final_weight_checksum"]
    assert (tracking.metric_history(linear.run_id, "lr", uri=uri)
            == tracking.metric_history(none.run_id, "lr", uri=uri))
