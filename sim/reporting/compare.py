"""Compare training runs from MLflow in the form of the paper's tables and figures.

- The paper's Tables 2, 3 and 4 with our test AUCs beside the paper's figures (``PAPER_TABLES``).
- Test AUC mean ± std over seeds, per group of comparable runs (the epoch of each run was picked
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

Runs are averaged only with runs that are comparable (:data:`GROUP`, what training logs as its
``comparison.*`` params, :mod:`sim.training.comparability`): the same dataset, named from the samples'
own commits (an optional ``dataset`` label is shown beside it, never instead), the same split dates,
data settings and samples commits read, the same experiment id (a variant of a model never pools with
the paper's form), model and training settings, and number of processes; of one seed the latest run.
Every table and figure is computed per group and says how many seeds it averages; where one dataset or
expid has more than one group, its label names the keys that tell them apart. The reference rows are
per column (one dataset's test data). Runs logged before these keys show ``unrecorded`` for them.

    python -m sim.compare --experiment sim-synthetic [--tracking-uri URI] [--out compare_out]

The figures and the tables are written to ``--out`` and logged to a ``comparison`` run of the experiment.
Which runs form a group: :mod:`sim.reporting.runs`; Figure 4 and Table 6: :mod:`sim.reporting.d_category`.
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
from sim.reporting.d_category import _d_category_figure, d_category_table
from sim.reporting.runs import (COLUMN_KEY, GROUP, KEY, KEY_LEGEND, LABEL_PARTS, _groups, _metric, _order,
                                _sorted, finished_runs)
from sim.training.diagnostics import DIAGNOSTICS

log = logging.getLogger("sim.compare")

REFERENCES = (("oracle_auc", "oracle p_click"), ("oracle_short_auc", "oracle p_click_short"),
              ("popularity_auc", "item popularity"), ("gbdt_auc", "gradient boosting on counts"))
# Statistics of a dataset's test rows, printed under the references: (run metric, label, format).
DATA_STATISTICS = (("hard_nonempty_share", "hard search non-empty", "{:.1%}"),
                   ("long_len_median", "median long length", "{:.0f}"))
# The reference rows the lift table puts beside the models: (run metric, row name).
LIFT_REFERENCES = (("gbdt_auc", "gbdt (reference)"),)
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


def auc_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per group (:data:`GROUP`): test AUC mean, std over its seeds, their number (``runs``), mean
    gAUC, logloss and picked epoch."""
    g = _groups(runs.assign(**{n: _metric(runs, n) for n in ("auc", "gauc", "logloss", "best_epoch")}),
                GROUP + KEY)
    table = pd.DataFrame({"auc_mean": g["auc"].mean(), "auc_std": g["auc"].std(ddof=0),
                          "runs": g["auc"].size(), "gauc_mean": g["gauc"].mean(),
                          "logloss_mean": g["logloss"].mean(), "best_epoch_mean": g["best_epoch"].mean()})
    return _sorted(table.reset_index())


def reference_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per column (:data:`COLUMN_KEY`: the same test impressions): the reference AUCs and the
    statistics of its test rows (NaN where not logged), mean over its runs (``runs``), which logged the
    same figures (a reference depends on the data only)."""
    names = [n for n, _ in REFERENCES] + [n for n, *_ in DATA_STATISTICS]
    g = _groups(runs.assign(**{n: _metric(runs, n) for n in names}), COLUMN_KEY + ["column"])
    out = g[names].mean()
    out["runs"] = g.size()
    return out.reset_index().sort_values("column", kind="stable").reset_index(drop=True)


def _din_auc(row: pd.Series, din: pd.DataFrame) -> tuple[float, float]:
    """(AUC, seeds) of the DIN group ``row`` is measured against: in its column, trained with the same
    training settings and processes (a reference row: the column's only DIN group); NaN if none or
    several match."""
    same = din[(din[COLUMN_KEY] == row[COLUMN_KEY]).all(axis=1)]
    if row.get("train_hash") == row.get("train_hash"):  # a model's group, not a reference row
        same = same[(same.train_hash == row.train_hash) & (same.processes == row.processes)]
    return (float(same.auc_mean.iloc[0]), float(same.runs.iloc[0])) if len(same) == 1 else (np.nan, np.nan)


def lift_table(table: pd.DataFrame, refs: pd.DataFrame) -> pd.DataFrame:
    """Per group: ``short_share`` = (AUC - 0.5) / (oracle_short - 0.5), the share of the short-window
    oracle's lift over chance; ``oracle_share`` = (AUC - AUC_din) / (oracle - AUC_din), the share of the
    oracle's lift over DIN a model recovers (SIM's part of the gap), against the DIN group of the same
    column trained with the same settings and processes. The references of :data:`LIFT_REFERENCES` get a
    row of their own per column that logged them (after the models)."""
    cols = GROUP + KEY + ["auc_mean", "runs"]
    extra = [refs.assign(model=name, row=name, auc_mean=refs[metric])[COLUMN_KEY + ["column", "model", "row",
                                                                                    "auc_mean", "runs"]]
             for metric, name in LIFT_REFERENCES if metric in refs]
    extra = [e[e.auc_mean.notna()] for e in extra]
    t = pd.concat([table[cols], *extra], ignore_index=True)
    t = t.sort_values("column", kind="stable").reset_index(drop=True)
    t = t.merge(refs.drop(columns=["column", "runs"]), on=COLUMN_KEY, how="left")
    din = table[table.model == "din"]
    base = [_din_auc(r, din) for _, r in t.iterrows()]
    t["din_auc"] = [a for a, _ in base]
    t["din_runs"] = [n for _, n in base]
    t["short_share"] = (t.auc_mean - 0.5) / (t.oracle_short_auc - 0.5)
    t["oracle_share"] = (t.auc_mean - t.din_auc) / (t.oracle_auc - t.din_auc)
    return t[cols + ["short_share", "oracle_share", "din_runs"]]


def _at_epoch(run_id: str, name: str, epoch: float, uri: str | None) -> float:
    history = dict(tracking.metric_history(run_id, name, uri=uri))
    if not history:
        return float("nan")
    return history.get(int(epoch), history[max(history)]) if epoch == epoch else history[max(history)]


def diagnostics_table(runs: pd.DataFrame, uri: str | None = None) -> pd.DataFrame:
    """Per group of the search models: each diagnostic at the run's picked epoch, mean and std over its
    runs (``runs``)."""
    names = [n for n in DIAGNOSTICS if f"metrics.{n}" in runs]
    if not names:
        return pd.DataFrame()
    rows = []
    for _, r in runs.iterrows():
        if all(pd.isna(r.get(f"metrics.{n}")) for n in names):
            continue
        epoch = r.get("metrics.best_epoch", float("nan"))
        rows.append({**{k: r[k] for k in GROUP + KEY}, **{n: _at_epoch(r.run_id, n, epoch, uri) for n in names}})
    if not rows:
        return pd.DataFrame()
    g = _groups(pd.DataFrame(rows), GROUP + KEY)
    out = pd.concat([g[names].mean().add_suffix("_mean"), g[names].std(ddof=0).add_suffix("_std"),
                     g.size().rename("runs")], axis=1)
    return _sorted(out.reset_index())


def _cell(mean: float, std: float, n: int | None = None) -> str:
    if mean != mean:
        return "-"
    return f"{mean:.4f} ± {std:.4f}" + (f" (n={n})" if n is not None else "")


def _width(labels, least: int) -> int:
    return max([least, *(len(str(x)) + 2 for x in labels)])


def _labelled(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the labels of :data:`KEY`, the dataset and the model where it has none."""
    return table.assign(**{k: table[name] for k, (name, _) in LABEL_PARTS.items() if k not in table})


def _row_labels(table: pd.DataFrame) -> list[str]:
    """The row labels of ``table`` in the paper's model order."""
    order = {m: i for i, m in enumerate(_order(table.model))}
    pairs = table[["model", "row"]].drop_duplicates()
    return [r for _, r in sorted(zip(pairs.model.map(order), pairs.row))]


def format_auc_table(table: pd.DataFrame, refs: pd.DataFrame | None = None) -> str:
    """The paper's Table 2 layout: a row per experiment id (and its keys where it has several groups), a
    column per dataset (and its keys where it has several), test AUC mean ± std (n seeds); then the
    reference rows and the statistics of each column's test rows."""
    table = _labelled(table)
    columns = list(dict.fromkeys(table.column))
    rows = _row_labels(table)
    w, cw = _width(rows, 28), _width(columns, 26)
    header = f"{'Model':<{w}}" + "".join(f"{c:>{cw}}" for c in columns)
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = []
        for c in columns:
            r = table[(table.row == row) & (table.column == c)]
            cells.append(_cell(r.auc_mean.iloc[0], r.auc_std.iloc[0], int(r.runs.iloc[0])) if len(r) else "-")
        lines.append(f"{row:<{w}}" + "".join(f"{x:>{cw}}" for x in cells))
    if refs is not None and not refs.empty:
        lines.append("-" * len(header))
        by_column = refs.set_index("column")
        for metric, label, fmt in [(m, label, "{:.4f}") for m, label in REFERENCES] + list(DATA_STATISTICS):
            vals = [by_column[metric].get(c, np.nan) if metric in by_column else np.nan for c in columns]
            if all(v != v for v in vals):
                continue
            lines.append(f"{label:<{w}}" + "".join(f"{'-' if v != v else fmt.format(v):>{cw}}" for v in vals))
    return "\n".join(lines)


def format_paper_tables(table: pd.DataFrame) -> str:
    """The paper's Tables 2, 3 and 4 with our test AUCs (mean ± std (n seeds) per column) beside the
    paper's figures; a model without finished runs is marked ``no runs``, a model with several groups
    has a line per group (its keys in brackets)."""
    table = _labelled(table)
    columns = list(dict.fromkeys(table.column))
    cw = _width(columns, 20) + 6
    blocks = []
    for title, paper_cols, figures, rows in PAPER_TABLES:
        lines_of = [(label, model, row) for label, model in rows
                    for row in ([r for r in _row_labels(table) if table[table.row == r].model.iloc[0] == model]
                                or [model])]
        w = _width([label + row[len(model):] for label, model, row in lines_of], 28)
        header = (f"{'Model':<{w}}" + "".join(f"{'ours ' + c:>{cw}}" for c in columns)
                  + "".join(f"{'paper ' + c:>20}" for c in paper_cols))
        lines = [title, header, "-" * len(header)]
        for label, model, row in lines_of:
            paper, cells = figures[model], []
            for c in columns:
                r = table[(table.row == row) & (table.model == model) & (table.column == c)]
                cells.append(_cell(r.auc_mean.iloc[0], r.auc_std.iloc[0], int(r.runs.iloc[0]))
                             if len(r) else "no runs")
            lines.append(f"{label + row[len(model):]:<{w}}" + "".join(f"{x:>{cw}}" for x in cells)
                         + "".join(f"{p or '-':>20}" for p in paper))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _dataset_width(table: pd.DataFrame) -> int:
    """Width of the dataset column: its longest label plus two spaces (at least 14)."""
    return _width(table.get("column", []), 14)


def _model_width(table: pd.DataFrame) -> int:
    return _width(table.get("row", []), 22)


def format_lift_table(lifts: pd.DataFrame) -> str:
    lifts = _labelled(lifts)
    w, mw = _dataset_width(lifts), _model_width(lifts)
    lines = [f"{'dataset':<{w}}{'Model':<{mw}}{'AUC':>8}{'n':>4}{'of short oracle lift':>22}"
             f"{'of oracle lift over DIN':>25}"]
    for _, r in lifts.iterrows():
        share = "-" if r.short_share != r.short_share else f"{100 * r.short_share:.1f}%"
        lift = "-" if r.oracle_share != r.oracle_share else f"{100 * r.oracle_share:.1f}%"
        lines.append(f"{r.column:<{w}}{r.row:<{mw}}{r.auc_mean:>8.4f}{int(r.runs):>4}{share:>22}{lift:>25}")
    return "\n".join(lines)


def format_diagnostics_table(diag: pd.DataFrame) -> str:
    if diag.empty:
        return "(no search diagnostics logged)"
    diag = _labelled(diag)
    names = [n for n in DIAGNOSTICS if f"{n}_mean" in diag]
    w, mw = _dataset_width(diag), _model_width(diag)
    lines = [f"{'dataset':<{w}}{'Model':<{mw}}{'n':>4}" + "".join(f"{n:>22}" for n in names)]
    for _, r in diag.iterrows():
        lines.append(f"{r.column:<{w}}{r.row:<{mw}}{int(r.runs):>4}"
                     + "".join(f"{_cell(r[f'{n}_mean'], r[f'{n}_std']):>22}" for n in names))
    return "\n".join(lines)


def _learning_curves(runs: pd.DataFrame, experiment: str, uri: str | None, plt):
    """A panel per column, a line per group: validation AUC per epoch, mean over the group's runs."""
    columns = sorted(dict.fromkeys(runs.column))
    fig, axes = plt.subplots(1, len(columns), figsize=(7 * len(columns), 4.5), squeeze=False)
    for ax, column in zip(axes[0], columns):
        part = runs[runs.column == column]
        for row in _row_labels(part):
            group = part[part.row == row]
            curves = [dict(tracking.metric_history(r, "val_auc", uri=uri)) for r in group.run_id]
            steps = sorted(set().union(*curves))
            ax.plot(steps, [np.mean([c[s] for c in curves if s in c]) for s in steps], marker="o",
                    label=f"{row} (n={len(group)})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation AUC")
        ax.set_title(f"{column} ({experiment})")
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

    d_table, dist = d_category_table(runs, uri, top_fraction)
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
    d_table = _labelled(d_table)
    w, mw = _dataset_width(d_table), _model_width(d_table)
    lines = [f"{'dataset':<{w}}{'Model':<{mw}}{'n':>4}{'avg d_category':>16}{'p(d_category > -1)':>20}{'clicks':>8}"]
    for _, r in d_table.iterrows():
        lines.append(f"{r.column:<{w}}{r.row:<{mw}}{int(r.runs):>4}{r.avg_d_category:>16.2f}"
                     f"{r['p_d_category_gt_-1']:>20.3f}{r.clicked_in_top:>8.1f}")
    return "\n".join(lines)


def report(res: dict, experiment: str, top_fraction: float = 0.2) -> str:
    """Every table of :func:`compare` as text, as the CLI prints it."""
    labels = [*res["auc_table"].column, *res["auc_table"].row]
    return "\n".join([
        f"Test AUC (mean ± std over the seeds of a group, n = seeds; epoch picked on validation), "
        f"experiment {experiment}", *([KEY_LEGEND] if any("[" in str(x) for x in labels) else []),
        format_auc_table(res["auc_table"], res["reference_table"]), "",
        "The paper's tables, our runs beside its figures (model: sim.models)",
        format_paper_tables(res["auc_table"]), "",
        "Share of the reachable lift: DIN against p_click_short's lift over 0.5; every model against the "
        "oracle's lift over DIN",
        format_lift_table(res["lift_table"]), "",
        "Search diagnostics at the picked epoch (validation impressions; mean ± std over the seeds)",
        format_diagnostics_table(res["diagnostics_table"]), "",
        f"d_category of clicked impressions in each model's top {int(top_fraction * 100)}% (paper Table 6; "
        "mean over the seeds)",
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
