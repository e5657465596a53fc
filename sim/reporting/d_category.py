"""The paper's Figure 4 and Table 6 per group of runs: where in a user's history the clicks each model
scores highest come from, as d_category (days since the user's last behavior in the clicked item's
category, -1 if none), from each run's logged test predictions."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from sim.adapters import tracking
from sim.reporting.runs import GROUP, KEY, _groups, _sorted

log = logging.getLogger("sim.compare")

D_CATEGORY_BINS = [(-1, -1, "none"), (0, 7, "0-7"), (8, 14, "8-14"), (15, 30, "15-30"),
                   (31, 60, "31-60"), (61, 90, "61-90"), (91, 180, "91-180"), (181, 10**9, ">180")]
def run_predictions(run_id: str, uri: str | None = None) -> pd.DataFrame:
    return pd.read_parquet(tracking.download_artifact(run_id, "test_predictions.parquet", uri=uri))


def top_clicked(pred: pd.DataFrame, top_fraction: float = 0.2) -> pd.DataFrame:
    """Clicked impressions among the ``top_fraction`` of impressions the model scores highest."""
    cut = pred.score.quantile(1 - top_fraction)
    return pred[(pred.score >= cut) & (pred.label == 1)]


def d_category_stats(pred: pd.DataFrame, top_fraction: float = 0.2) -> dict[str, float]:
    """Table 6: average d_category and p(d_category > -1) over the top-scored clicked impressions."""
    top = top_clicked(pred, top_fraction)
    d = top.d_category.to_numpy()
    return {"avg_d_category": float(d[d >= 0].mean()) if (d >= 0).any() else float("nan"),
            "p_d_category_gt_-1": float((d > -1).mean()) if len(d) else float("nan"),
            "clicked_in_top": float(len(d))}


def d_category_distribution(pred: pd.DataFrame, top_fraction: float = 0.2) -> pd.Series:
    top = top_clicked(pred, top_fraction)
    counts = {label: int(((top.d_category >= lo) & (top.d_category <= hi)).sum())
              for lo, hi, label in D_CATEGORY_BINS}
    s = pd.Series(counts, dtype=float)
    return s / s.sum() if s.sum() else s


def _d_category_figure(dist: dict[tuple[str, str], pd.Series], top_fraction: float, plt):
    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels = [b[2] for b in D_CATEGORY_BINS]
    width = 0.8 / max(1, len(dist))
    for i, key in enumerate(dist):
        ax.bar(np.arange(len(labels)) + i * width, dist[key].reindex(labels).to_numpy(), width,
               label="/".join(key))
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels)
    ax.set_xlabel("d_category (days)")
    ax.set_ylabel(f"share of clicked impressions in top {int(top_fraction * 100)}%")
    ax.set_title("d_category of top-scored clicks (paper Fig. 4)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def d_category_table(runs: pd.DataFrame, uri: str | None = None, top_fraction: float = 0.2
                     ) -> tuple[pd.DataFrame, dict[tuple[str, str], pd.Series]]:
    """Figure 4 and Table 6 per group, from the test predictions of each of its runs: the statistics
    and the distribution of each run, mean over the group's runs (``runs``: those that logged
    predictions). Returns the table and the distributions by (column, row)."""
    stats, dists = [], {}
    for _, r in runs.iterrows():
        try:
            pred = run_predictions(r.run_id, uri)
        except Exception as e:  # an older run without predictions: say so, keep comparing the rest
            log.warning("run %s (%s) has no test predictions: %s", r.run_id, r.model, e)
            continue
        key = (r.column, r.row)
        dists.setdefault(key, []).append(d_category_distribution(pred, top_fraction))
        stats.append({**{k: r[k] for k in GROUP + KEY}, **d_category_stats(pred, top_fraction)})
    if not stats:
        return pd.DataFrame(), {}
    g = _groups(pd.DataFrame(stats), GROUP + KEY)
    names = ["avg_d_category", "p_d_category_gt_-1", "clicked_in_top"]
    table = pd.concat([g[names].mean(), g.size().rename("runs")], axis=1).reset_index()
    return _sorted(table), {k: pd.concat(v, axis=1).mean(axis=1) for k, v in dists.items()}
