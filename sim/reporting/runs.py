"""The training runs of an experiment as :mod:`sim.reporting.compare` groups them: the keys that make runs
comparable (what training logs as its ``comparison.*`` params, :mod:`sim.training.comparability`), the
labels the tables print for a group, and the order of the rows."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from sim.adapters import tracking

log = logging.getLogger("sim.compare")

MODEL_ORDER = ("din", "dien", "avgpool_long_din", "mimn", "gsu_only_hard", "gsu_only_soft", "sim_hard",
               "sim_hard_time", "sim_soft", "sim_soft_time")
# Reference rows: (run metric, label). Not models: the same figure for every run of a test set.
UNRECORDED = "unrecorded"
# What makes runs comparable, as sim.training logs it (the ``comparison.*`` params,
# :mod:`sim.training.comparability`): a column of the tables is one dataset's data (the same samples
# commits, split dates and data settings), a row one experiment id trained alike (model and training
# settings, processes). Runs are averaged only within one group: one column and one row.
COLUMN_KEY = ["dataset", "data_hash", "samples_versions"]
ROW_KEY = ["model", "model_hash", "train_hash", "processes"]
GROUP = COLUMN_KEY + ROW_KEY
# The labels of a group's column and row in the printed tables: the dataset and the expid, with the keys
# that tell them apart in brackets where one dataset or expid has more than one group.
KEY = ["column", "row"]
LABEL_PARTS = {"column": ("dataset", (("samples_versions", "samples {}"), ("data_hash", "data {}"))),
               "row": ("model", (("processes", "np {}"), ("train_hash", "train {}"), ("model_hash", "model {}")))}
KEY_LEGEND = ("[...]: what tells apart runs never averaged together: np = processes, samples = the versions of "
              "the samples commits read, train / model / data = hashes of the settings (MLflow params "
              "comparison.*); n = seeds averaged")


def _param(runs: pd.DataFrame, name: str) -> pd.Series:
    """``params.<name>`` of each run, NaN where not logged (or logged empty)."""
    col = f"params.{name}"
    if col not in runs:
        return pd.Series(np.nan, index=runs.index, dtype=object)
    return runs[col].where(runs[col].notna() & (runs[col].astype(str) != ""), np.nan)


def _dataset_name(label, derived) -> str:
    """The dataset a run is shown and grouped under: the one training derived from the samples' commits,
    with the config's ``dataset`` label beside it when that says something else; a run logged before
    the derivation shows its label marked unrecorded."""
    label = None if pd.isna(label) else str(label)
    if pd.isna(derived):
        return f"{label} ({UNRECORDED})" if label else UNRECORDED
    return str(derived) if not label or label == derived else f"{label} ({derived})"


def finished_runs(experiment: str, uri: str | None = None) -> pd.DataFrame:
    """Finished training runs (those with a test AUC) of ``experiment``, with the keys they are grouped
    by (:data:`GROUP`; ``unrecorded`` where a run logged before them lacks one) and their labels
    (:data:`KEY`); of the runs of one group and seed only the latest (a re-run is not another seed)."""
    runs = tracking.search_runs([experiment], uri=uri)
    if runs.empty or "metrics.auc" not in runs:
        return pd.DataFrame()
    runs = runs[(runs["status"] == "FINISHED") & runs["metrics.auc"].notna()].copy()
    # A row per experiment id (conf/experiments.yaml): the paper's forms run under their model names, a
    # variant of a model (count features, a search prior) under its own id, so the two never pool. Runs
    # logged without an expid fall back to the model name.
    runs["model"] = _param(runs, "expid").fillna(_param(runs, "model.name")).astype(str)
    runs["dataset"] = [_dataset_name(lbl, d) for lbl, d in zip(_param(runs, "dataset"),
                                                               _param(runs, "comparison.dataset"))]
    runs["data_hash"] = _param(runs, "comparison.data_hash").fillna(UNRECORDED)
    # Runs logged before the versions of the commits read: the snapshot version they read.
    runs["samples_versions"] = (_param(runs, "comparison.samples_versions")
                                .fillna(_param(runs, "data.samples_version")).fillna(UNRECORDED))
    runs["model_hash"] = _param(runs, "comparison.model_hash").fillna(UNRECORDED)
    runs["train_hash"] = _param(runs, "comparison.train_hash").fillna(UNRECORDED)
    runs["processes"] = (_param(runs, "comparison.processes").fillna(_param(runs, "horovod.size"))
                         .fillna(UNRECORDED))
    runs["seed"] = _param(runs, "train.seed").fillna("")
    for c in GROUP:
        runs[c] = runs[c].astype(str)
    runs = runs.sort_values("start_time")
    seeded = runs.seed != ""
    repeats = seeded & runs.duplicated(GROUP + ["seed"], keep="last")
    if repeats.any():
        log.warning("%d earlier run(s) of a seed already run in the same group left out (the latest counts): %s",
                    int(repeats.sum()), ", ".join(runs.run_id[repeats]))
    return _with_labels(runs[~repeats].reset_index(drop=True))


def _samples_label(versions: str) -> str:
    """``3,4,5,7`` as ``3-5,7``."""
    try:
        vs = sorted(int(v) for v in versions.split(","))
    except ValueError:
        return versions
    spans: list[list[int]] = []
    for v in vs:
        if spans and v == spans[-1][1] + 1:
            spans[-1][1] = v
        else:
            spans.append([v, v])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)


def _with_labels(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with the labels of :data:`KEY`: the dataset (expid), followed in brackets by the keys
    that differ between its groups when it has more than one."""
    runs = runs.copy()
    for label, (name, parts) in LABEL_PARTS.items():
        out = runs[name].astype(str).copy()
        for value, g in runs.groupby(name, sort=False):
            varying = [(c, fmt) for c, fmt in parts if g[c].nunique() > 1]
            if varying:
                out[g.index] = [f"{value} [" + ", ".join(
                    fmt.format(_samples_label(r[c]) if c == "samples_versions" else r[c]) for c, fmt in varying) + "]"
                    for _, r in g.iterrows()]
        runs[label] = out
    return runs


def _order(models) -> list[str]:
    known = [m for m in MODEL_ORDER if m in set(models)]
    return known + sorted(set(models) - set(known))


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    """By column label, then model in the paper's order, then row label."""
    order = {m: i for i, m in enumerate(_order(table.model))}
    return (table.assign(_m=table.model.map(order)).sort_values(["column", "_m", "row"], kind="stable")
            .drop(columns="_m").reset_index(drop=True))


def _metric(runs: pd.DataFrame, name: str) -> pd.Series:
    col = f"metrics.{name}"
    return runs[col] if col in runs else pd.Series(np.nan, index=runs.index)


def _groups(frame: pd.DataFrame, by: list[str]):
    return frame.groupby(by, sort=False, dropna=False)
