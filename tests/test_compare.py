"""Run comparison from a real MLflow store: tables, d_category analysis, figures, and the notebook."""
from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, run
from sim import compare, tracking


def _log_run(uri: str, model: str, seed: int, aucs: list[float], pred: pd.DataFrame) -> None:
    with tracking.run("cmp", run_name=model, uri=uri):
        tracking.log_params({"model": {"name": model}, "dataset": "synthetic", "train": {"seed": seed}})
        for step, a in enumerate(aucs, start=1):
            tracking.log_metrics({"auc": a, "gauc": a - 0.01, "logloss": 0.5}, step=step)
        tracking.log_table(pred, "eval_predictions.parquet")


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
            _log_run(uri, model, seed, [0.6, 0.65 + 0.01 * seed + (0.05 if model == "sim_soft" else 0)],
                     pd.DataFrame({"impression_id": np.arange(n), "user_id": np.arange(n) % 20,
                                   "label": label, "d_category": d_cat, "long_len": 10, "score": score}))
    return uri


def test_auc_table_mean_std_and_d_category_shift(store, tmp_path):
    res = compare.compare("cmp", store, tmp_path / "out")
    t = res["auc_table"].set_index("model")
    assert t.loc["sim_soft", "runs"] == 3
    assert t.loc["sim_soft", "auc_mean"] == pytest.approx(np.mean([0.71, 0.72, 0.73]))
    assert t.loc["din", "auc_std"] == pytest.approx(np.std([0.66, 0.67, 0.68]))
    d = res["d_category_table"].set_index("model")
    assert d.loc["sim_soft", "avg_d_category"] > d.loc["din", "avg_d_category"]
    for png in ("auc_per_epoch.png", "d_category_distribution.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000
    text = compare.format_auc_table(res["auc_table"])
    assert "sim_soft" in text and "±" in text
    runs = tracking.search_runs(["cmp"], uri=store)
    cmp_run = runs[runs["tags.kind"] == "comparison"]
    assert len(cmp_run) == 1  # the figures were logged to MLflow too


def test_compare_cli_prints_tables(store, tmp_path):
    proc = run([sys.executable, "-m", "sim.compare", "--experiment", "cmp", "--tracking-uri", store,
                "--out", str(tmp_path / "o"), "--no-log"])
    assert "AUC (mean ± std over runs)" in proc.stdout and "avg d_category" in proc.stdout


def test_compare_without_runs_says_what_to_do(tmp_path):
    proc = run([sys.executable, "-m", "sim.compare", "--experiment", "none", "--tracking-uri",
                f"sqlite:///{tmp_path / 'm.db'}"], check=False)
    assert proc.returncode != 0 and "train some with sim.train first" in proc.stderr


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
