"""Evaluation metrics of the paper: AUC, logloss and gAUC (impression-weighted per-user AUC)."""
from __future__ import annotations

import numpy as np
import pandas as pd


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum statistic, ties averaged; NaN when only one class is present."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Per-user AUC weighted by the user's impression count, over users with both classes.

    Vectorised: ranks within each user by one grouped rank (ties averaged), then each user's rank-sum
    statistic from grouped sums, so millions of users cost a few sorts, not a Python loop."""
    df = pd.DataFrame({"u": np.asarray(users), "y": np.asarray(labels).astype(bool),
                       "s": np.asarray(scores, dtype=np.float64)})
    df["r"] = df.groupby("u", sort=False)["s"].rank(method="average")
    df["r_pos"] = df["r"].where(df["y"], 0.0)
    g = df.groupby("u", sort=False).agg(n=("y", "size"), n_pos=("y", "sum"), r_pos=("r_pos", "sum"))
    n_neg = g["n"] - g["n_pos"]
    g = g[(g["n_pos"] > 0) & (n_neg > 0)]
    if g.empty:
        return float("nan")
    user_auc = (g["r_pos"] - g["n_pos"] * (g["n_pos"] + 1) / 2) / (g["n_pos"] * (g["n"] - g["n_pos"]))
    return float((user_auc * g["n"]).sum() / g["n"].sum())
