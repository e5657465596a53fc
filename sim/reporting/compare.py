"""Compare training runs from MLflow in the form of the paper's tables and figures.

- The paper's Tables 2, 3 and 4 with our test AUCs beside the paper's figures (``PAPER_TABLES``).
- Test AUC mean ± std over seeds, per model and dataset (the epoch of each run was picked
  on its validation dates), with the reference rows of the same test impressions: the generator's
  oracles ``p_click`` and ``p_click_short`` (synthetic data), item popularity (no model) and gradient
  boosting on the counts a samples row holds (:mod:`sim.training.reference`), and two statistics of the
  test rows that say when long-term models cannot differ from DIN: the share whose hard search is
  non-empty and the median long-window length.
- The share of the reachable lift each model recovers: DIN against ``p_click_short`` (the best a
  short-window model can rank by), every model (and the gradient-boosting reference) against the
  oracle's lift over DIN.
- Search diagnostics (:mod:`sim.training.diagnostics`) at the picked epoch: ``gsu_auc``,
  ``topk_same_category``, ``topk_same_topic``, ``hard_soft_overlap``.
- Validation AUC per epoch per model (learning curves), one panel per dataset.
- Figure 4: distribution of d_category (days since the user's last behavior in the clicked item's
  category, -1 if none) over the clicked impressions each model scores highest.
- Table 6: average d_category and p(d_category > -1) over those impressions.

Everything is keyed by (dataset, experiment id): runs of several datasets logged to one experiment never mix,
and a variant of a model (its own expid in conf/experiments.yaml) never pools with the paper's form.

    python -m sim.compare --experiment sim-synthetic [--tracking-uri URI] [--out compare_out]

The figures and the tables are written to ``--out`` and logged to a ``comparison`` run of the experiment.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from sim.adapters import tracking
from sim.training.diagnostics import DIAGNOSTICS

log = logging.getLogger("sim.compare")

D_CATEGORY_BINS = [(-1, -1, "none"), (0, 7, "0-7"), (8, 14, "8-14"), (15, 30, "15-30"),
                   (31, 60, "31-60"), (61, 90, "61-90"), (91, 180, "91-180"), (181, 10**9, ">180")]
MODEL_ORDER = ("din", "dien", "avgpool_long_din", "mimn", "gsu_only_hard", "gsu_only_soft", "sim_hard",
               "sim_hard_time", "sim_soft", "sim_soft_time")
# Reference rows: (run metric, label). Not models: the same figure for every run of a test set.
REFERENCES = (("oracle_auc", "oracle p_click"), ("oracle_short_auc", "oracle p_click_short"),
              ("popularity_auc", "item popularity"), ("gbdt_auc", "gradient boosting on counts"))
# Statistics of a dataset's test rows, printed under the references: (run metric, label, format).
DATA_STATISTICS = (("hard_nonempty_share", "hard search non-empty", "{:.1%}"),
                   ("long_len_median", "median long length", "{:.0f}"))
# The reference rows the lift table puts beside the models: (run metric, row name).
LIFT_REFERENCES = (("gbdt_auc", "gbdt (reference)"),)
KEY = ["dataset", "model"]
# The paper's Tables 2-4 (Pi et al. 2020): title, the paper's columns, rows of (the paper's label, our
# model, the paper's AUC per column or None where the paper has none). Table 3's "Avg-Pooling without
# Search" is the same model as Table 2's Avg-Pooling Long DIN (same figures in the paper).
# The paper's test AUCs: Taobao and Amazon (Tables 2 and 3 share rows), and the industrial dataset.
PAPER_PUBLIC = {
    "din": ("0.9214 ± 0.00017", "0.7276 ± 0.00051"),
    "avgpool_long_din": ("0.9281 ± 0.00025", "0.7280 ± 0.00012"),
    "mimn": ("0.9278 ± 0.00035", "0.7396 ± 0.00037"),
    "gsu_only_hard": ("0.9330 ± 0.00031", "0.7365 ± 0.00022"),
    "gsu_only_soft": ("0.9357 ± 0.00025", "0.7342 ± 0.00012"),
    "sim_hard": ("0.9332 ± 0.00008", "0.7413 ± 0.00016"),
    "sim_soft": ("0.9416 ± 0.00049", "0.7510 ± 0.00052"),
    "sim_soft_time": ("0.9501 ± 0.00017", None),
}
PAPER_INDUSTRIAL = {"dien": ("0.6452",), "mimn": ("0.6541",), "sim_hard": ("0.6604",), "sim_soft": ("0.6625",),
                    "sim_hard_time": ("0.6624",)}
# (title, the paper's columns, its figures by model, rows as (the paper's label, our model)).
PAPER_TABLES = (
    ("Table 2: public datasets", ("Taobao", "Amazon"), PAPER_PUBLIC, (
        ("DIN", "din"), ("Avg-Pooling Long DIN", "avgpool_long_din"), ("MIMN", "mimn"),
        ("SIM (soft)", "sim_soft"), ("SIM (soft) with Timeinfo", "sim_soft_time"))),
    ("Table 3: two-stage search", ("Taobao", "Amazon"), PAPER_PUBLIC, (
        ("Avg-Pooling without Search", "avgpool_long_din"), ("Only First Stage (hard)", "gsu_only_hard"),
        ("Only First Stage (soft)", "gsu_only_soft"), ("SIM (hard)", "sim_hard"), ("SIM (soft)", "sim_soft"),
        ("SIM (soft) with Timeinfo", "sim_soft_time"))),
    ("Table 4: industrial dataset", ("Industrial",), PAPER_INDUSTRIAL, (
        ("DIEN", "dien"), ("MIMN", "mimn"), ("SIM (hard)", "sim_hard"), ("SIM (soft)", "sim_soft"),
        ("SIM (hard) with timeinfo", "sim_hard_time"))),
)


def finished_runs(experiment: str, uri: str | None = None) -> pd.DataFrame:
    """Finished training runs (those with a test AUC) of ``experiment``."""
    runs = tracking.search_runs([experiment], uri=uri)
    if runs.empty or "metrics.auc" not in runs:
        return pd.DataFrame()
    runs = runs[(runs["status"] == "FINISHED") & runs["metrics.auc"].notna()].copy()
    # A row per experiment id (conf/experiments.yaml): the paper's forms run under their model names, a
    # variant of a model (count features, a search prior) under its own id, so the two never pool. Runs
    # logged without an expid fall back to the model name.
    name = runs.get("params.model.name", pd.Series(index=runs.index, dtype=object))
    runs["model"] = runs.get("params.expid", pd.Series(index=runs.index, dtype=object)).fillna(name)
    runs["dataset"] = runs.get("params.dataset", pd.Series("default", index=runs.index)).fillna("default")
    runs["seed"] = runs.get("params.train.seed", pd.Series("", index=runs.index))
    return runs


def _order(models) -> list[str]:
    known = [m for m in MODEL_ORDER if m in set(models)]
    return known + sorted(set(models) - set(known))


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    order = {m: i for i, m in enumerate(_order(table.model))}
    return table.sort_values(KEY, key=lambda s: s.map(order) if s.name == "model" else s).reset_index(drop=True)


def _metric(runs: pd.DataFrame, name: str) -> pd.Series:
    col = f"metrics.{name}"
    return runs[col] if col in runs else pd.Series(np.nan, index=runs.index)


def auc_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, model): test AUC mean, std over seeds, number of runs, mean gAUC, logloss
    and picked epoch."""
    g = runs.assign(**{n: _metric(runs, n) for n in ("auc", "gauc", "logloss", "best_epoch")}).groupby(KEY)
    table = pd.DataFrame({"auc_mean": g["auc"].mean(), "auc_std": g["auc"].std(ddof=0),
                          "runs": g["auc"].size(), "gauc_mean": g["gauc"].mean(),
                          "logloss_mean": g["logloss"].mean(), "best_epoch_mean": g["best_epoch"].mean()})
    return _sorted(table.reset_index())


def reference_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset: the reference AUCs of its test impressions and the statistics of its test
    rows (NaN where not logged)."""
    names = [n for n, _ in REFERENCES] + [n for n, *_ in DATA_STATISTICS]
    refs = runs.assign(**{n: _metric(runs, n) for n in names})
    return refs.groupby("dataset")[names].mean().reset_index()


def lift_table(table: pd.DataFrame, refs: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, model): ``short_share`` = (AUC - 0.5) / (oracle_short - 0.5), the share of the
    short-window oracle's lift over chance; ``oracle_share`` = (AUC - AUC_din) / (oracle - AUC_din),
    the share of the oracle's lift over DIN a model recovers (SIM's part of the gap). The references of
    :data:`LIFT_REFERENCES` get a row of their own per dataset that logged them (after the models)."""
    extra = [pd.DataFrame({"dataset": refs.dataset, "model": name, "auc_mean": refs[metric]})
             for metric, name in LIFT_REFERENCES if metric in refs]
    extra = [e[e.auc_mean.notna()] for e in extra]
    table = pd.concat([table[KEY + ["auc_mean"]], *extra], ignore_index=True)
    table = table.sort_values("dataset", kind="stable").reset_index(drop=True)
    t = table.merge(refs, on="dataset", how="left")
    din = t[t.model == "din"].set_index("dataset").auc_mean
    t["din_auc"] = t.dataset.map(din)
    t["short_share"] = (t.auc_mean - 0.5) / (t.oracle_short_auc - 0.5)
    t["oracle_share"] = (t.auc_mean - t.din_auc) / (t.oracle_auc - t.din_auc)
    return t[KEY + ["auc_mean", "short_share", "oracle_share"]]


def _at_epoch(run_id: str, name: str, epoch: float, uri: str | None) -> float:
    history = dict(tracking.metric_history(run_id, name, uri=uri))
    if not history:
        return float("nan")
    return history.get(int(epoch), history[max(history)]) if epoch == epoch else history[max(history)]


def diagnostics_table(runs: pd.DataFrame, uri: str | None = None) -> pd.DataFrame:
    """Per (dataset, model) of the search models: each diagnostic at the run's picked epoch, mean and
    std over runs."""
    names = [n for n in DIAGNOSTICS if f"metrics.{n}" in runs]
    if not names:
        return pd.DataFrame()
    rows = []
    for _, r in runs.iterrows():
        if all(pd.isna(r.get(f"metrics.{n}")) for n in names):
            continue
        epoch = r.get("metrics.best_epoch", float("nan"))
        rows.append({"dataset": r.dataset, "model": r.model,
                     **{n: _at_epoch(r.run_id, n, epoch, uri) for n in names}})
    if not rows:
        return pd.DataFrame()
    g = pd.DataFrame(rows).groupby(KEY)
    out = pd.concat([g.mean().add_suffix("_mean"), g.std(ddof=0).add_suffix("_std"),
                     g.size().rename("runs")], axis=1)
    return _sorted(out.reset_index())


def _cell(mean: float, std: float, n: int | None = None) -> str:
    if mean != mean:
        return "-"
    return f"{mean:.4f} ± {std:.4f}" + (f" (n={n})" if n is not None else "")


def format_auc_table(table: pd.DataFrame, refs: pd.DataFrame | None = None) -> str:
    """The paper's Table 2 layout: models as rows, one test-AUC column per dataset (mean ± std (n)),
    then the reference rows and the statistics of each dataset's test rows."""
    datasets = list(dict.fromkeys(table.dataset))
    header = f"{'Model':<28}" + "".join(f"{d:>26}" for d in datasets)
    lines = [header, "-" * len(header)]
    for m in _order(table.model):
        cells = []
        for d in datasets:
            r = table[(table.model == m) & (table.dataset == d)]
            cells.append(_cell(r.auc_mean.iloc[0], r.auc_std.iloc[0], int(r.runs.iloc[0])) if len(r) else "-")
        lines.append(f"{m:<28}" + "".join(f"{c:>26}" for c in cells))
    if refs is not None and not refs.empty:
        lines.append("-" * len(header))
        by_dataset = refs.set_index("dataset")
        for metric, label, fmt in [(m, label, "{:.4f}") for m, label in REFERENCES] + list(DATA_STATISTICS):
            vals = [by_dataset[metric].get(d, np.nan) if metric in by_dataset else np.nan for d in datasets]
            if all(v != v for v in vals):
                continue
            lines.append(f"{label:<28}" + "".join(f"{'-' if v != v else fmt.format(v):>26}" for v in vals))
    return "\n".join(lines)


def format_paper_tables(table: pd.DataFrame) -> str:
    """The paper's Tables 2, 3 and 4 with our test AUCs (mean ± std (n) per dataset) beside the paper's
    figures; a model without finished runs is marked ``no runs``."""
    datasets = list(dict.fromkeys(table.dataset))
    blocks = []
    for title, paper_cols, figures, rows in PAPER_TABLES:
        header = (f"{'Model':<28}" + "".join(f"{'ours ' + d:>26}" for d in datasets)
                  + "".join(f"{'paper ' + c:>20}" for c in paper_cols))
        lines = [title, header, "-" * len(header)]
        for label, model in rows:
            paper, cells = figures[model], []
            for d in datasets:
                r = table[(table.model == model) & (table.dataset == d)]
                cells.append(_cell(r.auc_mean.iloc[0], r.auc_std.iloc[0], int(r.runs.iloc[0]))
                             if len(r) else "no runs")
            lines.append(f"{label:<28}" + "".join(f"{c:>26}" for c in cells)
                         + "".join(f"{p or '-':>20}" for p in paper))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _dataset_width(table: pd.DataFrame) -> int:
    """Width of the dataset column: its longest name plus two spaces (at least 14)."""
    return max([14, *(len(str(d)) + 2 for d in table.get("dataset", []))])


def format_lift_table(lifts: pd.DataFrame) -> str:
    w = _dataset_width(lifts)
    lines = [f"{'dataset':<{w}}{'Model':<22}{'AUC':>8}{'of short oracle lift':>22}{'of oracle lift over DIN':>25}"]
    for _, r in lifts.iterrows():
        share = "-" if r.short_share != r.short_share else f"{100 * r.short_share:.1f}%"
        lift = "-" if r.oracle_share != r.oracle_share else f"{100 * r.oracle_share:.1f}%"
        lines.append(f"{r.dataset:<{w}}{r.model:<22}{r.auc_mean:>8.4f}{share:>22}{lift:>25}")
    return "\n".join(lines)


def format_diagnostics_table(diag: pd.DataFrame) -> str:
    if diag.empty:
        return "(no search diagnostics logged)"
    names = [n for n in DIAGNOSTICS if f"{n}_mean" in diag]
    w = _dataset_width(diag)
    lines = [f"{'dataset':<{w}}{'Model':<22}" + "".join(f"{n:>22}" for n in names)]
    for _, r in diag.iterrows():
        lines.append(f"{r.dataset:<{w}}{r.model:<22}"
                     + "".join(f"{_cell(r[f'{n}_mean'], r[f'{n}_std']):>22}" for n in names))
    return "\n".join(lines)


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


def _learning_curves(runs: pd.DataFrame, experiment: str, uri: str | None, plt):
    datasets = list(dict.fromkeys(runs.dataset))
    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 4.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        part = runs[runs.dataset == dataset]
        for model in _order(part.model):
            curves = [dict(tracking.metric_history(r, "val_auc", uri=uri)) for r in part[part.model == model].run_id]
            steps = sorted(set().union(*curves))
            ax.plot(steps, [np.mean([c[s] for c in curves if s in c]) for s in steps], marker="o", label=model)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation AUC")
        ax.set_title(f"{dataset} ({experiment})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


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


def compare(experiment: str, uri: str | None = None, out_dir: str | Path = "compare_out",
            top_fraction: float = 0.2, log_to_mlflow: bool = True) -> dict:
    """Build the tables and figures of ``experiment``; returns them (and writes/logs the files)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = finished_runs(experiment, uri)
    if runs.empty:
        raise SystemExit(f"no finished runs with a test AUC in MLflow experiment {experiment!r} "
                         f"(store {tracking.resolve_tracking_uri(uri)}); train some with sim.train first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table, refs = auc_table(runs), reference_table(runs)
    lifts, diag = lift_table(table, refs), diagnostics_table(runs, uri)
    files = {"auc_table.csv": table, "reference_table.csv": refs, "lift_table.csv": lifts,
             "diagnostics_table.csv": diag}
    figs = {"auc_per_epoch.png": _learning_curves(runs, experiment, uri, plt)}

    # Figure 4 and Table 6 from each (dataset, model)'s latest run's test predictions.
    latest = runs.sort_values("start_time").groupby(KEY).tail(1)
    dist, stats = {}, []
    for _, r in latest.iterrows():
        try:
            pred = run_predictions(r.run_id, uri)
        except Exception as e:  # an older run without predictions: say so, keep comparing the rest
            log.warning("run %s (%s) has no test predictions: %s", r.run_id, r.model, e)
            continue
        dist[(r.dataset, r.model)] = d_category_distribution(pred, top_fraction)
        stats.append({"dataset": r.dataset, "model": r.model, **d_category_stats(pred, top_fraction)})
    d_table = _sorted(pd.DataFrame(stats)) if stats else pd.DataFrame()
    if not d_table.empty:
        files["d_category_table.csv"] = d_table
        figs["d_category_distribution.png"] = _d_category_figure(dist, top_fraction, plt)

    for name, frame in files.items():
        frame.to_csv(out / name, index=False)
    for name, f in figs.items():
        f.savefig(out / name, dpi=110)
    if log_to_mlflow:
        with tracking.run(experiment, run_name="comparison", uri=uri, tags={"kind": "comparison"}):
            for name, f in figs.items():
                tracking.log_figure(f, name)
            for name in files:
                tracking.log_artifact(out / name)
    for f in figs.values():
        plt.close(f)
    return {"auc_table": table, "reference_table": refs, "lift_table": lifts, "diagnostics_table": diag,
            "d_category_table": d_table, "runs": runs, "out_dir": out}


def format_d_category_table(d_table: pd.DataFrame) -> str:
    if d_table.empty:
        return "(no test predictions logged)"
    w = _dataset_width(d_table)
    lines = [f"{'dataset':<{w}}{'Model':<22}{'avg d_category':>16}{'p(d_category > -1)':>20}{'clicks':>8}"]
    for _, r in d_table.iterrows():
        lines.append(f"{r.dataset:<{w}}{r.model:<22}{r.avg_d_category:>16.2f}{r['p_d_category_gt_-1']:>20.3f}"
                     f"{int(r.clicked_in_top):>8}")
    return "\n".join(lines)


def report(res: dict, experiment: str, top_fraction: float = 0.2) -> str:
    """Every table of :func:`compare` as text, as the CLI prints it."""
    return "\n".join([
        f"Test AUC (mean ± std over runs; epoch picked on validation), experiment {experiment}",
        format_auc_table(res["auc_table"], res["reference_table"]), "",
        "The paper's tables, our runs beside its figures (model: sim.models)",
        format_paper_tables(res["auc_table"]), "",
        "Share of the reachable lift: DIN against p_click_short's lift over 0.5; every model against the "
        "oracle's lift over DIN",
        format_lift_table(res["lift_table"]), "",
        "Search diagnostics at the picked epoch (validation impressions; mean ± std over runs)",
        format_diagnostics_table(res["diagnostics_table"]), "",
        f"d_category of clicked impressions in each model's top {int(top_fraction * 100)}% (paper Table 6)",
        format_d_category_table(res["d_category_table"])])


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
    print(report(res, args.experiment, args.top_fraction))
    print(f"\nfigures and tables in {res['out_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
