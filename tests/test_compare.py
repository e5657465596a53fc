"""Run comparison from a real MLflow store: tables, d_category analysis, figures, and the notebook."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from helpers.inprocess import call_main
from sim.reporting import compare, d_category
from sim.adapters import tracking


# What sim.train logs of the data and settings a run's figures depend on (sim.training.comparability).
SYNTHETIC = {"dataset": "synthetic", "data_hash": "d0a1", "samples_versions": "3,4,5,6", "model_hash": "m0",
             "train_hash": "t0", "processes": 2}


def _log_run(uri: str, model: str, seed: int, aucs: list[float], pred: pd.DataFrame,
             dataset: str | None = None, diag: dict | None = None, refs: dict | None = None,
             comparison: dict | None = None) -> None:
    """A training run as sim.train logs it: the ``comparison`` keys (:data:`SYNTHETIC` by default; an
    empty dict: a run logged before them) and the config's optional ``dataset`` label, validation
    metrics per epoch, then the test metrics of the picked epoch (here the last) with the reference rows
    (``refs``: the gradient-boosting reference and the test rows' statistics, which runs logged before
    them lack)."""
    keys = SYNTHETIC if comparison is None else comparison
    with tracking.run("cmp", run_name=model, uri=uri):
        tracking.log_params({"expid": model, "model": {"name": model}, "dataset": dataset, "train": {"seed": seed},
                             **({"comparison": {**keys, "model_hash": f"{keys['model_hash']}-{model}"}}
                                if keys else {})})
        for step, a in enumerate(aucs, start=1):
            tracking.log_metrics({"val_auc": a - 0.02, **(diag or {})}, step=step)
        tracking.log_metrics({"auc": aucs[-1], "gauc": aucs[-1] - 0.01, "logloss": 0.5,
                              "best_epoch": len(aucs), "oracle_auc": 0.85, "oracle_short_auc": 0.75,
                              "popularity_auc": 0.55, **(refs or {})})
        tracking.log_table(pred, "test_predictions.parquet")


SYNTHETIC_REFS = {"gbdt_auc": 0.7, "hard_nonempty_share": 0.625, "long_len_median": 312.0}


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rng = np.random.default_rng(0)
    n = 400
    d_cat = rng.choice([-1, 3, 30, 90], n)
    label = rng.integers(0, 2, n)
    for seed in (1, 2, 3):
        # "sim" scores clicks with long-ago category history highest, "din" only recent ones.
        for model, favour in (("din", d_cat == 3), ("sim_soft", d_cat >= 30)):
            score = rng.random(n) * 0.5 + 0.5 * favour
            diag = ({"gsu_auc": 0.6 + 0.01 * seed, "topk_same_category": 0.5, "hard_soft_overlap": 0.7}
                    if model == "sim_soft" else None)
            _log_run(uri, model, seed, [0.6, 0.65 + 0.01 * seed + (0.05 if model == "sim_soft" else 0)],
                     pd.DataFrame({"impression_id": np.arange(n), "user_id": np.arange(n) % 20,
                                   "label": label, "d_category": d_cat, "long_len": 10, "score": score}),
                     diag=diag, refs=SYNTHETIC_REFS)
    # Another dataset in the same experiment must not mix into the synthetic rows.
    _log_run(uri, "din", 1, [0.7, 0.8], pd.DataFrame({"impression_id": np.arange(n), "user_id": np.arange(n) % 20,
                                                     "label": label, "d_category": d_cat, "long_len": 10,
                                                     "score": rng.random(n)}), dataset="ml-100k",
             comparison={**SYNTHETIC, "dataset": "movielens", "data_hash": "d1b2", "samples_versions": "2"})
    return uri


def test_auc_table_mean_std_and_d_category_shift(store, tmp_path):
    res = compare.compare("cmp", store, tmp_path / "out")
    t = res["auc_table"].set_index(["dataset", "model"])
    assert t.loc[("synthetic", "sim_soft"), "runs"] == 3
    assert t.loc[("synthetic", "sim_soft"), "auc_mean"] == pytest.approx(np.mean([0.71, 0.72, 0.73]))
    assert t.loc[("synthetic", "din"), "auc_std"] == pytest.approx(np.std([0.66, 0.67, 0.68]))
    ml = "ml-100k (movielens)"  # the label beside the dataset the run's samples name
    assert t.loc[(ml, "din"), "auc_mean"] == pytest.approx(0.8) and t.loc[(ml, "din"), "runs"] == 1
    d = res["d_category_table"].set_index(["dataset", "model"])
    assert d.loc[("synthetic", "sim_soft"), "avg_d_category"] > d.loc[("synthetic", "din"), "avg_d_category"]
    # The lift shares: DIN against the short oracle, SIM against the oracle's lift over DIN.
    lift = res["lift_table"].set_index(["dataset", "model"])
    din = np.mean([0.66, 0.67, 0.68])
    assert lift.loc[("synthetic", "din"), "short_share"] == pytest.approx((din - 0.5) / 0.25)
    assert lift.loc[("synthetic", "sim_soft"), "oracle_share"] == pytest.approx((0.72 - din) / (0.85 - din))
    # Gradient boosting is a reference: its own row per dataset that logged it, read like a model.
    assert lift.loc[("synthetic", "gbdt (reference)"), "oracle_share"] == pytest.approx((0.7 - din) / (0.85 - din))
    assert (ml, "gbdt (reference)") not in lift.index  # its run logged no gbdt_auc
    refs = res["reference_table"].set_index("dataset")
    assert refs.loc["synthetic", "gbdt_auc"] == pytest.approx(0.7) and np.isnan(refs.loc[ml, "gbdt_auc"])
    lines = {ln[:28].strip(): ln for ln in compare.format_auc_table(res["auc_table"], res["reference_table"]).splitlines()}
    assert lines["gradient boosting on counts"].split()[-2:] == ["-", "0.7000"]  # ml-100k, then synthetic
    assert lines["hard search non-empty"].split()[-2:] == ["-", "62.5%"]
    assert lines["median long length"].split()[-2:] == ["-", "312"]
    # Diagnostics at the picked epoch, mean over the seeds; models without search have none.
    diag = res["diagnostics_table"].set_index(["dataset", "model"])
    assert diag.loc[("synthetic", "sim_soft"), "gsu_auc_mean"] == pytest.approx(0.62)
    assert ("synthetic", "din") not in diag.index
    text = compare.report(res, "cmp")
    assert "item popularity" in text and "hard_soft_overlap" in text and "oracle p_click_short" in text
    for png in ("auc_per_epoch.png", "d_category_distribution.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000
    text = compare.format_auc_table(res["auc_table"])
    assert "sim_soft" in text and "±" in text
    runs = tracking.search_runs(["cmp"], uri=store)
    cmp_run = runs[runs["tags.kind"] == "comparison"]
    assert len(cmp_run) == 1  # the figures were logged to MLflow too


def test_paper_tables_put_our_runs_beside_the_papers_and_mark_missing_models():
    table = pd.DataFrame({"dataset": ["synthetic", "synthetic", "ml-100k"], "model": ["din", "sim_soft", "din"],
                          "auc_mean": [0.7, 0.75, 0.8], "auc_std": [0.001, 0.002, 0.0], "runs": [3, 3, 1]})
    text = compare.format_paper_tables(table)
    blocks = text.split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [t for t, *_ in compare.PAPER_TABLES]
    t2 = {line[:28].strip(): line for line in blocks[0].splitlines()[3:]}
    assert "0.7000 ± 0.0010 (n=3)" in t2["DIN"] and "0.8000 ± 0.0000 (n=1)" in t2["DIN"]
    assert "0.9214 ± 0.00017" in t2["DIN"] and t2["MIMN"].count("no runs") == 2
    assert "0.7500 ± 0.0020 (n=3)" in t2["SIM (soft)"] and "no runs" in t2["SIM (soft)"]
    t4 = {line[:28].strip(): line for line in blocks[2].splitlines()[3:]}
    assert "no runs" in t4["DIEN"] and "0.6452" in t4["DIEN"]


def test_compare_cli_prints_tables(store, tmp_path, capfd):
    """``python -m sim.compare``'s ``main`` in this process (the command itself runs in the README
    walkthrough, tests/test_end_to_end.py)."""
    status, out = call_main(compare.main, ["--experiment", "cmp", "--tracking-uri", store,
                                           "--out", str(tmp_path / "o"), "--no-log"], capfd, "out")
    assert status == 0
    assert "Test AUC (mean ± std over the seeds of a group" in out and "avg d_category" in out
    assert "Search diagnostics" in out and "of oracle lift over DIN" in out
    assert "Table 3: two-stage search" in out
    assert "gradient boosting on counts" in out and "gbdt (reference)" in out
    assert "hard search non-empty" in out and "median long length" in out


def test_compare_without_runs_says_what_to_do(tmp_path, capfd):
    with pytest.raises(SystemExit, match="train some with sim.train first"):
        call_main(compare.main, ["--experiment", "none", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"], capfd)


def test_notebook_executes_headless(store, tmp_path):
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(ROOT / "notebooks/compare_runs.ipynb", as_version=4)
    os.environ.update(SIM_EXPERIMENT="cmp", MLFLOW_TRACKING_URI=store, SIM_COMPARE_OUT=str(tmp_path / "nb"))
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        for k in ("SIM_EXPERIMENT", "MLFLOW_TRACKING_URI", "SIM_COMPARE_OUT"):
            os.environ.pop(k, None)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_a_variant_of_a_model_never_pools_with_the_papers_form(tmp_path):
    """Runs of one model name under two experiment ids (the paper's form and a count-keeping variant) are
    two rows; a run logged without an expid keys on its model name."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pred = pd.DataFrame({"impression_id": np.arange(4), "user_id": np.arange(4), "label": [0, 1, 0, 1],
                         "d_category": [-1, 3, 30, 90], "long_len": 10, "score": [0.1, 0.9, 0.2, 0.8]})
    for expid, auc in (("sim_hard", 0.7), ("sim_hard_counts", 0.8)):
        with tracking.run("cmp", run_name=expid, uri=uri):
            tracking.log_params({"expid": expid, "model": {"name": "sim_hard"}, "dataset": "synthetic",
                                 "train": {"seed": 1}})
            tracking.log_metrics({"auc": auc, "gauc": auc, "logloss": 0.5, "best_epoch": 1})
            tracking.log_table(pred, "test_predictions.parquet")
    _log_run(uri, "din", 1, [0.6], pred)
    t = compare.auc_table(compare.finished_runs("cmp", uri)).set_index("model")
    assert t.loc["sim_hard", "auc_mean"] == pytest.approx(0.7)
    assert t.loc["sim_hard_counts", "auc_mean"] == pytest.approx(0.8)
    assert t.loc["din", "runs"] == 1


def _pred(n: int, favour: np.ndarray, label: np.ndarray, d_cat: np.ndarray, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"impression_id": np.arange(n), "user_id": np.arange(n) % 20, "label": label,
                         "d_category": d_cat, "long_len": 10, "score": rng.random(n) * 0.5 + 0.5 * favour})


def test_runs_that_differ_in_what_decides_the_result_are_never_averaged(tmp_path):
    """One expid run with 1 and 2 processes, with other training settings and on other samples commits:
    each is a group of its own in every table, labelled by what tells it apart; the lift of a model is
    measured against the DIN group trained alike; the d_category table averages every seed of a group
    (not its latest run); of two runs of one seed in one group only the latest counts."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    n = 300
    rng = np.random.default_rng(1)
    d_cat, label = rng.choice([-1, 3, 30, 90], n), rng.integers(0, 2, n)
    np1, other_lr, resampled = ({**SYNTHETIC, "processes": 1}, {**SYNTHETIC, "train_hash": "t9"},
                                {**SYNTHETIC, "samples_versions": "7,8"})
    _log_run(uri, "din", 1, [0.5], _pred(n, d_cat == 3, label, d_cat, 0), refs=SYNTHETIC_REFS)  # re-run below
    preds = {}
    for seed in (1, 2):
        for model, keys, auc in (("din", SYNTHETIC, 0.66), ("din", np1, 0.72), ("din", other_lr, 0.60),
                                 ("din", resampled, 0.62), ("sim_soft", SYNTHETIC, 0.75), ("sim_soft", np1, 0.80)):
            pred = _pred(n, (d_cat >= 30) if model == "sim_soft" else (d_cat == 3), label, d_cat, 10 * seed)
            preds.setdefault((model, keys["processes"], keys["train_hash"], keys["samples_versions"]), []).append(pred)
            _log_run(uri, model, seed, [auc + 0.01 * seed], pred, refs=SYNTHETIC_REFS, comparison=keys)
    res = compare.compare("cmp", uri, tmp_path / "out", log_to_mlflow=False)
    t = res["auc_table"]
    # 4 groups of 2 seeds each (the earlier run of seed 1 left out), never one pool of 9 runs.
    assert sorted(t[t.model == "din"].runs) == [2, 2, 2, 2]
    din = t[t.model == "din"].set_index(["processes", "train_hash", "samples_versions"])
    assert din.loc[("2", "t0", "3,4,5,6"), "auc_mean"] == pytest.approx(0.675)
    assert din.loc[("1", "t0", "3,4,5,6"), "auc_mean"] == pytest.approx(0.735)
    # The labels name the keys that differ: processes and training settings in the rows, the samples
    # commits read in the columns; sim_soft's two groups differ in processes only.
    rows = set(t.row)
    assert {"din [np 2, train t0]", "din [np 1, train t0]", "din [np 2, train t9]",
            "sim_soft [np 2]", "sim_soft [np 1]"} <= rows
    assert set(t.column) == {"synthetic [samples 3-6]", "synthetic [samples 7-8]"}
    text = compare.report(res, "cmp")
    assert compare.KEY_LEGEND in text
    auc_lines = {ln[:30].strip(): ln for ln in text.split("\n\n")[0].splitlines()}
    assert "0.6750 ± 0.0050 (n=2)" in auc_lines["din [np 2, train t0]"]
    assert "0.7350 ± 0.0050 (n=2)" in auc_lines["din [np 1, train t0]"]
    # Lift: each sim_soft group against the DIN group with its processes and training settings.
    lift = res["lift_table"].set_index(["column", "row"])
    col = "synthetic [samples 3-6]"
    assert lift.loc[(col, "sim_soft [np 2]"), "oracle_share"] == pytest.approx((0.765 - 0.675) / (0.85 - 0.675))
    assert lift.loc[(col, "sim_soft [np 1]"), "oracle_share"] == pytest.approx((0.815 - 0.735) / (0.85 - 0.735))
    # d_category: every seed of the group, each run's statistics averaged.
    d = res["d_category_table"].set_index(["column", "row"])
    for (model, procs), row in ((("sim_soft", 2), "sim_soft [np 2]"), (("din", 1), "din [np 1, train t0]")):
        runs = preds[(model, procs, "t0", "3,4,5,6")]
        assert d.loc[(col, row), "runs"] == 2
        assert d.loc[(col, row), "avg_d_category"] == pytest.approx(
            np.mean([d_category.d_category_stats(p)["avg_d_category"] for p in runs]))
    lines = [ln for ln in compare.format_d_category_table(res["d_category_table"]).splitlines()
             if "sim_soft [np 1]" in ln]
    assert len(lines) == 1 and lines[0].split()[-4] == "2"  # n, then the three figures


def test_runs_logged_before_the_comparison_keys_are_shown_apart(tmp_path):
    """A run logged before training recorded its comparison keys (only a ``dataset`` label, which was
    "synthetic" whatever the data) is compared, under its label marked unrecorded, never averaged with
    runs that recorded theirs."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    n = 200
    rng = np.random.default_rng(2)
    d_cat, label = rng.choice([-1, 3, 30, 90], n), rng.integers(0, 2, n)
    _log_run(uri, "din", 1, [0.6], _pred(n, d_cat == 3, label, d_cat, 1), dataset="synthetic", comparison={})
    _log_run(uri, "din", 1, [0.7], _pred(n, d_cat == 3, label, d_cat, 2))
    _log_run(uri, "din", 2, [0.72], _pred(n, d_cat == 3, label, d_cat, 3), dataset="synthetic")
    res = compare.compare("cmp", uri, tmp_path / "out", log_to_mlflow=False)
    t = res["auc_table"]
    assert sorted(zip(t.runs, t.auc_mean.round(4))) == [(1, 0.6), (2, 0.71)]
    t = t.set_index("dataset")
    assert t.loc["synthetic (unrecorded)", "runs"] == 1 and t.loc["synthetic (unrecorded)", "auc_mean"] == 0.6
    assert t.loc["synthetic", "runs"] == 2 and t.loc["synthetic", "auc_mean"] == pytest.approx(0.71)
    assert t.loc["synthetic (unrecorded)", "processes"] == "unrecorded"
    assert "synthetic (unrecorded)" in compare.report(res, "cmp")


# ---------------------------------------------------------------- the keys a real training run records
IMPORT_DATES = ("2017-11-25", "2017-11-30")
SPLIT_SETS = ["train_dates=[2017-11-26,2017-11-28]", "valid_dates=[2017-11-29,2017-11-29]",
              "test_dates=[2017-11-30,2017-11-30]"]
TINY = ["model.emb_dim=4", "model.item_buckets=101", "model.category_buckets=11", "model.mlp_dims=[16,8]",
        "train.batch_size=32", "train.eval_batch_size=256", "train.threads=1", "train.epochs=2",
        "train.patience=0", "train.loader_workers=1"]


@pytest.fixture(scope="module")
def imported_lakehouse(spark, tmp_path_factory):
    """A Taobao-format log imported by the import job (every behavior after a user's first a target) and
    its count-mode samples replayed by the samples job: the commits a user's lakehouse holds."""
    from sim.config import Caps, Windows
    from sim.inputs.canonical import day_start_ts
    from sim.inputs.importers import Protocol
    from sim.inputs.ingest import run_import
    from sim.samples.contract import SampleSpec
    from sim.samples.job import build_samples_replay

    root = tmp_path_factory.mktemp("imported")
    rng = np.random.default_rng(5)
    start = day_start_ts(IMPORT_DATES[0])
    lines = []
    for user in range(1, 61):
        for t in np.sort(rng.choice(6 * 86400, 12, replace=False)):
            item = int(rng.integers(1, 80))
            lines.append(f"{user},{item},{item % 8 + 1},pv,{start + int(t)}")
    (root / "UserBehavior.csv").write_text("\n".join(lines) + "\n")
    lake = root / "lake"
    run_import(spark, "taobao", str(root / "UserBehavior.csv"), str(lake), max_reject_ratio=0.0,
               date_range=IMPORT_DATES, protocol=Protocol(mode="every"), now_ts=day_start_ts("2030-01-01"))
    spec = SampleSpec(Windows(mode="count", long_count=20, short_count=5), Caps(short_cap=5, hard_k=10, long_cap=20))
    build_samples_replay(spark, str(lake), "2017-11-26", IMPORT_DATES[1], spec)
    return lake


def _train_in_process(lake, tmp_path, *sets: str) -> dict:
    """``sim.train`` of din in this process (one Horovod process), tracked to ``tmp_path``'s store; returns
    the run's params and metrics."""
    from sim.config.experiment import load_experiment
    from sim.training.loop import train

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_experiment(ROOT / "conf/experiments.yaml", "din",
                          [*TINY, *SPLIT_SETS, f"lakehouse={lake}", f"tracking_uri={uri}", "experiment=keys",
                           f"train.checkpoint_dir={tmp_path / 'ckpt'}", *sets])
    train(cfg)
    runs = tracking.search_runs(["keys"], uri=uri)
    r = runs.sort_values("start_time").iloc[-1]
    return {"params": {k[len("params."):]: v for k, v in r.items() if k.startswith("params.")},
            "metrics": {k[len("metrics."):]: v for k, v in r.items() if k.startswith("metrics.")},
            "uri": uri, "run_id": r.run_id}


def test_a_training_run_names_its_data_from_the_samples_commits(spark, imported_lakehouse, tmp_path):
    """Training derives the dataset from what the lakehouse's commits record (the import of a Taobao
    log: ``taobao``, whatever the config's label says), records the samples commits it read and its
    processes; a samples table whose commits record no input is ``unknown``, not ``synthetic``; and
    sim.compare groups by those records."""
    from helpers.samples_table import write_samples
    from sim.adapters import delta_io

    run = _train_in_process(imported_lakehouse, tmp_path, "dataset=synthetic")
    p = run["params"]
    assert p["comparison.dataset"] == "taobao"
    samples = delta_io.table_path(str(imported_lakehouse), "samples")
    replay = [v for v, m in delta_io.log_commit_metadata(samples) if m.get("job") == "build_samples"]
    assert p["comparison.samples_versions"] == str(replay[-1])
    assert p["comparison.processes"] == "1"
    # Another lakehouse whose samples commits record no inputs (written straight, as by another tool).
    legacy = tmp_path / "legacy"
    write_samples(spark, delta_io.table_path(str(legacy), "samples"),
                  ["2017-11-26", "2017-11-27", "2017-11-28", "2017-11-29", "2017-11-30"], 200)
    other = _train_in_process(legacy, tmp_path)
    assert other["params"]["comparison.dataset"] == "unknown"
    assert other["params"]["comparison.data_hash"] != p["comparison.data_hash"]
    t = compare.auc_table(compare.finished_runs("keys", run["uri"])).set_index("dataset")
    assert set(t.index) == {"synthetic (taobao)", "unknown"}  # a label never hides the data's own name
    assert (t.runs == 1).all()
