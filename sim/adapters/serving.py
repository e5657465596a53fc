"""The trained model scoring samples rows as a user sends them: what the logged MLflow pyfunc
(:func:`sim.adapters.tracking.log_scoring_model`) runs under `mlflow models serve`,
``mlflow.pyfunc.load_model`` or a Spark UDF (``mlflow.pyfunc.spark_udf``). No MLflow here: it stays
behind :mod:`sim.adapters.tracking`.

Input: a pandas DataFrame of samples rows, the columns of the samples table the model reads
(:attr:`CTRModel.input_columns`), sequences as lists of ids (any length up to the caps the model was
trained with; padding, if any, is 0 at the end). Output: the click probability of each row
(``sigmoid(logit)``), the ``score`` of the run's ``test_predictions.parquet``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from sim.formats.packing import PACKED_COLUMNS, Ragged

SIM_PACKAGE = Path(__file__).resolve().parents[1]  # the sim/ directory, shipped with the logged model


def dense_batch(rows: pd.DataFrame, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """``columns`` of ``rows`` as numpy arrays: scalars as int64, sequence columns (lists) padded with 0
    to the batch's longest list (at least 1), with the dtypes training's batches have."""
    out = {}
    for c in columns:
        values = rows[c].to_numpy()
        if c not in PACKED_COLUMNS:
            out[c] = values.astype(np.int64)
            continue
        lists = [np.asarray(v if v is not None else [], dtype=np.int64) for v in values]
        lengths = np.fromiter((len(v) for v in lists), dtype=np.int64, count=len(lists))
        flat = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)
        out[c] = Ragged.from_stored(flat, lengths, PACKED_COLUMNS[c], name=f"{c}: sequence values").dense()
    return out


def rows_as_lists(batch: Mapping[str, np.ndarray], n: int) -> pd.DataFrame:
    """The first ``n`` rows of a dense batch as a DataFrame a user would send: sequences as lists cut
    to their real length (trailing padding dropped)."""
    data = {}
    for c, a in batch.items():
        a = np.asarray(a)[:n]
        if a.ndim == 2:
            data[c] = [row[:int(np.flatnonzero(row).max(initial=-1)) + 1].tolist() for row in a]
        else:
            data[c] = a.tolist()
    return pd.DataFrame(data)


def score(model, rows: pd.DataFrame) -> np.ndarray:
    """Click probabilities of ``rows`` (samples rows, sequences as lists) by ``model``."""
    columns = list(model.input_columns)
    missing = [c for c in columns if c not in rows.columns]
    if missing:
        raise ValueError(f"the rows lack the samples column(s) the model reads: {missing}")
    return score_batch(model, dense_batch(rows, columns))


def score_batch(model, batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """Click probabilities of a dense batch (the model's input columns as padded arrays) by ``model``."""
    import torch
    with torch.no_grad():
        tensors = {c: torch.from_numpy(np.ascontiguousarray(batch[c])) for c in model.input_columns}
        logits = model.eval()(tensors)["logit"]
    return torch.sigmoid(logits.double()).numpy()
