"""Evaluation of a trained model over the ranks of a Horovod job: predictions gathered from every rank,
the paper's metrics (AUC, logloss, gAUC), the search diagnostics (:mod:`sim.training.diagnostics`), and the
reference rows every model is read against:

- ``oracle_auc`` / ``oracle_short_auc``: the generator's own click probabilities ``p_click`` and
  ``p_click_short`` (the click model without its long-term terms) on the same impressions (synthetic
  data only; imported logs have no oracle);
- ``popularity_auc``: no model at all, each candidate scored by its item's number of behaviors before
  the first test date (a strong baseline on public data, where a random never-seen item is the
  negative);
- ``gbdt_auc``: gradient boosting on the counts a samples row holds, fitted on the run's train and
  validation files (:mod:`sim.training.reference`, with the test rows' ``hard_nonempty_share`` and
  ``long_len_median``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from sim.training import diagnostics
from sim.samples.contract import ORACLE_COLUMNS

log = logging.getLogger(__name__)

# Per-impression columns kept with the scores (the test predictions artifact; Table 6 needs d_category).
PREDICTION_COLUMNS = ("impression_id", "user_id", "item_id", "label", "d_category", "long_len")


@dataclass
class Evaluation:
    """Predictions of every rank (columns of ``PREDICTION_COLUMNS``, ``score``, ``gsu_score`` for soft
    search, the oracle columns) and the summed search diagnostics tally."""
    pred: dict[str, np.ndarray]
    tally: np.ndarray = field(default_factory=diagnostics.empty_tally)


def _float_column(values: np.ndarray) -> np.ndarray:
    """A nullable double column as float64 (null -> NaN), whatever numpy dtype the reader gave."""
    if values.dtype == object:
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return values.astype(np.float64)


def evaluate(model, files: Sequence[tuple[str, int]], batch_size: int, rank: int, size: int,
             item_topic=None, workers: int = 1) -> Evaluation:
    """Predict this rank's shard of ``files`` ((path, rows) of a snapshot) and gather every rank's
    predictions and tallies: the shards of :class:`~sim.training.loader.ShardedLoader` are disjoint and
    cover every row, so each row is scored exactly once over the ranks. The model scores on its own
    device (``item_topic`` must be there too); scores come back to the host per batch."""
    import torch

    from sim.adapters import hvd
    from sim.training.device import to_device
    from sim.training.loader import ShardedLoader

    columns = list(dict.fromkeys([*model.input_columns, *PREDICTION_COLUMNS, *ORACLE_COLUMNS]))
    loader = ShardedLoader(files, columns, rank=rank, size=size, batch_size=batch_size, shuffle=False,
                           same_steps=False, trim=model.sequences, workers=workers)
    mode = model.gsu.mode if getattr(model, "gsu", None) is not None else None
    soft = mode == "soft"
    keys = (*PREDICTION_COLUMNS, *ORACLE_COLUMNS, "score", *(["gsu_score"] if soft else []))
    out: dict[str, list[np.ndarray]] = {c: [] for c in keys}
    tally = diagnostics.empty_tally()
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        for batch in loader.epoch():
            host = {c: torch.from_numpy(np.ascontiguousarray(batch[c])) for c in model.input_columns}
            tensors = to_device(host, device)
            result = model(tensors)
            out["score"].append(torch.sigmoid(result["logit"]).double().cpu().numpy())
            if soft:
                out["gsu_score"].append(torch.sigmoid(result["gsu_logit"]).double().cpu().numpy())
            if mode is not None:
                tally += diagnostics.tally_batch(tensors, result, mode, item_topic)
            for c in PREDICTION_COLUMNS:
                out[c].append(batch[c])
            for c in ORACLE_COLUMNS:
                out[c].append(_float_column(batch[c]))
    gathered = {}
    for c, parts in out.items():
        dtype = np.int64 if c in PREDICTION_COLUMNS else np.float64
        local = np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
        gathered[c] = hvd.allgather(torch.from_numpy(local), name=f"eval.{c}").numpy()
    tallies = hvd.allgather(torch.from_numpy(tally).unsqueeze(0), name="eval.tally").numpy()
    return Evaluation(gathered, tallies.sum(axis=0))


def ctr_metrics(pred: dict[str, np.ndarray]) -> dict[str, float]:
    """AUC, logloss and gAUC of ``score`` (the paper's metrics), and the number of impressions."""
    from sim.training.metrics import auc, gauc, logloss
    return {"auc": auc(pred["label"], pred["score"]),
            "logloss": logloss(pred["label"], pred["score"]),
            "gauc": gauc(pred["user_id"], pred["label"], pred["score"]),
            "rows": float(len(pred["label"]))}


def search_metrics(ev: Evaluation, mode: str | None, has_topics: bool) -> dict[str, float]:
    """The diagnostics of a search model (empty for the others)."""
    if mode is None:
        return {}
    from sim.training.metrics import auc
    out = diagnostics.metrics(ev.tally, mode, has_topics)
    if "gsu_score" in ev.pred:
        out["gsu_auc"] = auc(ev.pred["label"], ev.pred["gsu_score"])
    return out


def oracle_metrics(pred: dict[str, np.ndarray]) -> dict[str, float]:
    """AUC of the stored oracles on the same impressions (none for data without them)."""
    from sim.training.metrics import auc
    out = {}
    for col, name in (("p_click", "oracle_auc"), ("p_click_short", "oracle_short_auc")):
        values = pred.get(col)
        if values is not None and len(values) and not np.isnan(values).any():
            out[name] = auc(pred["label"], values)
    return out


def item_popularity(behaviors_path: str, before: str) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, behavior counts) of the behaviors table's rows with ``dt`` < ``before``, read from the
    Delta snapshot with delta-rs (no JVM)."""
    import pyarrow.compute as pc
    from sim.adapters.delta_io import open_log

    table = open_log(behaviors_path).to_pyarrow_dataset().to_table(
        columns=["item_id"], filter=pc.field("dt") < before)
    counts = pc.value_counts(table.column("item_id").combine_chunks())
    return (counts.field("values").to_numpy(zero_copy_only=False),
            counts.field("counts").to_numpy(zero_copy_only=False))


def popularity_auc(pred: dict[str, np.ndarray], behaviors_path: str, before: str) -> float:
    """AUC of scoring each impression by its item's popularity before ``before`` (no model)."""
    from sim.training.metrics import auc
    items, counts = item_popularity(behaviors_path, before)
    order = np.argsort(items)
    items, counts = items[order], counts[order]
    pos = np.searchsorted(items, pred["item_id"])
    found = (pos < len(items)) & (items[np.minimum(pos, len(items) - 1)] == pred["item_id"])
    score = np.where(found, counts[np.minimum(pos, len(items) - 1)], 0).astype(np.float64)
    return auc(pred["label"], score)
