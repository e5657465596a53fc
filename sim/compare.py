"""Compare training runs from MLflow in the form of the paper's tables and figures.

- Tables 2 / 3: eval AUC mean ± std over seeds, per model and dataset.
- AUC per epoch per model (learning curves).
- Figure 4: distribution of d_category (days since the user's last behavior in the clicked item's
  category, -1 if none) over the clicked impressions each model scores highest.
- Table 6: average d_category and p(d_category > -1) over those impressions.

    python -m sim.compare --experiment sim-synthetic [--tracking-uri URI] [--out compare_out]

The figures and the table are written to ``--out`` and logged to a ``comparison`` run of the experiment.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from sim import tracking

log = logging.getLogger("sim.compare")

D_CATEGORY_BINS = [(-1, -1, "none"), (0, 7, "0-7"), (8, 14, "8-14"), (15, 30, "15-30"),
                   (31, 60, "31-60"), (61, 90, "61-90"), (91, 180, "91-180"), (181, 10**9, ">180")]
MODEL_ORDER = ("din", "avgpool_long_din", "mimn", "gsu_only_hard", "gsu_only_soft", "sim_hard",
               "sim_hard_time", "sim_soft", "sim_soft_time")


def finished_runs(experiment: str, uri: str | None = None) -> pd.DataFrame:
    """Finished training runs (those with an eval AUC) of ``experiment``."""
    runs = tracking.search_runs([experiment], uri=uri)
    if runs.empty or "metrics.auc" not in runs:
        return pd.DataFrame()
    runs = runs[(runs["status"] == "FINISHED") & runs["metrics.auc"].notna()].copy()
    runs["model"] = runs.get("params.model.name", pd.Series(index=runs.index, dtype=str))
    runs["dataset"] = runs.get("params.dataset", pd.Series("default", index=runs.index)).fillna("default")
    runs["seed"] = runs.get("params.train.seed", pd.Series("", index=runs.index))
    return runs


def _order(models) -> list[str]:
    known = [m for m in MODEL_ORDER if m in set(models)]
    return known + sorted(set(models) - set(known))


def auc_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, model): AUC mean, std over seeds, number of runs, mean gAUC and logloss."""
    g = runs.groupby(["dataset", "model"])
    table = pd.DataFrame({
        "auc_mean": g["metrics.auc"].mean(),
        "auc_std": g["metrics.auc"].std(ddof=0),
        "runs": g["metrics.auc"].size(),
        "gauc_mean": g["metrics.gauc"].mean() if "metrics.gauc" in runs else np.nan,
        "logloss_mean": g["metrics.logloss"].mean() if "metrics.logloss" in runs else np.nan,
    }).reset_index()
    order = {m: i for i, m in enumerate(_order(table.model))}
    return table.sort_values(["dataset", "model"], key=lambda s: s.map(order) if s.name == "model" else s)


def format_auc_table(table: pd.DataFrame) -> str:
    """The paper's Table 2 layout: models as rows, one AUC (mean ± std) column per dataset."""
    datasets = list(dict.fromkeys(table.dataset))
    models = _order(table.model)
    header = f"{'Model':<20}" + "".join(f"{d:>24}" for d in datasets)
    lines = [header, "-" * len(header)]
    for m in models:
        cells = []
        for d in datasets:
            r = table[(table.model == m) & (table.dataset == d)]
            cells.append(f"{r.auc_mean.iloc[0]:.4f} ± {r.auc_std.iloc[0]:.4f} (n={int(r.runs.iloc[0])})"
                         if len(r) else "-")
        lines.append(f"{m:<20}" + "".join(f"{c:>24}" for c in cells))
    return "\n".join(lines)


def run_predictions(run_id: str, uri: str | None = None) -> pd.DataFrame:
    return pd.read_parquet(tracking.download_artifact(run_id, "eval_predictions.parquet", uri=uri))


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


def compare(experiment: str, uri: str | None = None, out_dir: str | Path = "compare_out",
            top_fraction: float = 0.2, log_to_mlflow: bool = True) -> dict:
    """Build the tables and figures of ``experiment``; returns them (and writes/logs the files)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = finished_runs(experiment, uri)
    if runs.empty:
        raise SystemExit(f"no finished runs with an eval AUC in MLflow experiment {experiment!r} "
                         f"(store {tracking.resolve_tracking_uri(uri)}); train some with sim.train first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = auc_table(runs)
    table.to_csv(out / "auc_table.csv", index=False)

    # Learning curves: AUC per epoch, one line per model (mean over its runs).
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model in _order(runs.model):
        curves = [dict(tracking.metric_history(r, "auc", uri=uri)) for r in runs[runs.model == model].run_id]
        steps = sorted(set().union(*curves))
        ax.plot(steps, [np.mean([c[s] for c in curves if s in c]) for s in steps], marker="o", label=model)
    ax.set_xlabel("epoch")
    ax.set_ylabel("eval AUC")
    ax.set_title(f"AUC per epoch ({experiment})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "auc_per_epoch.png", dpi=110)
    figs = {"auc_per_epoch.png": fig}

    # Figure 4 and Table 6 from each model's logged eval predictions (latest run per model).
    latest = runs.sort_values("start_time").groupby("model").tail(1)
    dist, stats = {}, []
    for _, r in latest.iterrows():
        try:
            pred = run_predictions(r.run_id, uri)
        except Exception as e:  # an older run without predictions: say so, keep comparing the rest
            log.warning("run %s (%s) has no eval predictions: %s", r.run_id, r.model, e)
            continue
        dist[r.model] = d_category_distribution(pred, top_fraction)
        stats.append({"model": r.model, **d_category_stats(pred, top_fraction)})
    d_table = pd.DataFrame(stats)
    if not d_table.empty:
        d_table = d_table.set_index("model").loc[[m for m in _order(d_table.model)]].reset_index()
        d_table.to_csv(out / "d_category_table.csv", index=False)
        fig, ax = plt.subplots(figsize=(8, 4.5))
        labels = [b[2] for b in D_CATEGORY_BINS]
        width = 0.8 / max(1, len(dist))
        for i, model in enumerate(_order(dist)):
            ax.bar(np.arange(len(labels)) + i * width, dist[model].reindex(labels).to_numpy(), width,
                   label=model)
        ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels)
        ax.set_xlabel("d_category (days)")
        ax.set_ylabel(f"share of clicked impressions in top {int(top_fraction * 100)}%")
        ax.set_title("d_category of top-scored clicks (paper Fig. 4)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "d_category_distribution.png", dpi=110)
        figs["d_category_distribution.png"] = fig

    if log_to_mlflow:
        with tracking.run(experiment, run_name="comparison", uri=uri, tags={"kind": "comparison"}):
            for name, f in figs.items():
                tracking.log_figure(f, name)
            tracking.log_artifact(out / "auc_table.csv")
            if not d_table.empty:
                tracking.log_artifact(out / "d_category_table.csv")
    for f in figs.values():
        plt.close(f)
    return {"auc_table": table, "d_category_table": d_table, "runs": runs, "out_dir": out}


def format_d_category_table(d_table: pd.DataFrame) -> str:
    if d_table.empty:
        return "(no eval predictions logged)"
    lines = [f"{'Model':<20}{'avg d_category':>16}{'p(d_category > -1)':>20}{'clicks':>8}"]
    for _, r in d_table.iterrows():
        lines.append(f"{r.model:<20}{r.avg_d_category:>16.2f}{r['p_d_category_gt_-1']:>20.3f}"
                     f"{int(r.clicked_in_top):>8}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from sim.cli import setup_logging
    setup_logging(logging.WARNING)
    p = argparse.ArgumentParser(prog="python -m sim.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True, help="MLflow experiment name")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--out", default="compare_out", help="directory for the PNGs and CSVs")
    p.add_argument("--top-fraction", type=float, default=0.2,
                   help="share of impressions counted as top-scored for the d_category analysis")
    p.add_argument("--no-log", action="store_true", help="do not log the comparison to MLflow")
    args = p.parse_args(argv)
    res = compare(args.experiment, args.tracking_uri, args.out, args.top_fraction, not args.no_log)
    print(f"AUC (mean ± std over runs), experiment {args.experiment}")
    print(format_auc_table(res["auc_table"]))
    print()
    print(f"d_category of clicked impressions in each model's top {int(args.top_fraction * 100)}% "
          f"(paper Table 6)")
    print(format_d_category_table(res["d_category_table"]))
    print(f"\nfigures and tables in {res['out_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
