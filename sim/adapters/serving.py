"""The trained model as an MLflow pyfunc that scores samples rows: what `mlflow models serve`,
``mlflow.pyfunc.load_model`` and a Spark UDF (``mlflow.pyfunc.spark_udf``) call.

Input: a pandas DataFrame of samples rows, the columns of the samples table the model reads
(:attr:`CTRModel.input_columns`), sequences as lists of ids (any length up to the caps the model was
trained with; padding, if any, is 0 at the end, as the samples table writes it). Output: the click
probability of each row (``sigmoid(logit)``), the ``score`` of the run's ``test_predictions.parquet``.

The model's signature (column names and types) and an input example (a few test rows, sequences cut
to their real length) are logged with it, so the serving endpoint validates requests and the MLflow UI
shows what to send. The torch module is pickled next to the ``sim`` package it is made of
(``code_paths``), so loading needs neither ``sim`` installed nor MLflow to infer requirements.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import mlflow.pyfunc
import numpy as np
import pandas as pd

SIM_PACKAGE = Path(__file__).resolve().parents[1]  # the sim/ directory, shipped with the model
# Sequence columns of the samples table end so (sim.samples.contract.seq_columns; not imported here:
# it needs pyspark, which a serving environment does not).
SEQUENCE_SUFFIXES = ("_items", "_cats", "_gaps")


def dense_batch(rows: pd.DataFrame, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """``columns`` of ``rows`` as int64 numpy arrays: scalars as they are, list columns (sequences) as
    B x L with L the longest list of the batch (at least 1), shorter lists padded with 0 at the end."""
    out = {}
    for c in columns:
        values = rows[c].to_numpy()
        if not c.endswith(SEQUENCE_SUFFIXES):
            out[c] = values.astype(np.int64)
            continue
        lists = [np.asarray(v if v is not None else [], dtype=np.int64) for v in values]
        lengths = np.fromiter((len(v) for v in lists), dtype=np.int64, count=len(lists))
        width = max(1, int(lengths.max(initial=0)))
        dense = np.zeros((len(lists), width), dtype=np.int64)
        if lengths.sum():
            # Row r's values go to positions 0..len-1 of row r: one scatter of the concatenated values.
            row_of = np.repeat(np.arange(len(lists)), lengths)
            pos = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            dense[row_of, pos] = np.concatenate(lists)
        out[c] = dense
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
    import torch
    columns = list(model.input_columns)
    missing = [c for c in columns if c not in rows.columns]
    if missing:
        raise ValueError(f"the rows lack the samples column(s) the model reads: {missing}")
    batch = dense_batch(rows, columns)
    with torch.no_grad():
        logits = model.eval()({c: torch.from_numpy(v) for c, v in batch.items()})["logit"]
    return torch.sigmoid(logits.double()).numpy()


class SamplesScorer(mlflow.pyfunc.PythonModel):
    """Scores samples rows with the torch model saved as the ``torch_model`` artifact."""

    def load_context(self, context) -> None:
        import torch
        self.model = torch.load(context.artifacts["torch_model"], map_location="cpu", weights_only=False)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        return score(self.model, model_input)


def log_scoring_model(model, example: Mapping[str, np.ndarray], name: str = "model", rows: int = 4) -> str:
    """Log ``model`` (a :class:`sim.models.CTRModel`) as a :class:`SamplesScorer` pyfunc, with the
    signature and input example of ``rows`` rows of ``example`` (a dense batch of its input columns).
    Returns its URI (``models:/<model id>``; MLflow 3 keeps a logged model apart from the run's
    artifacts, and that URI loads it from any tracking store, a server's proxied artifacts included)."""
    import tempfile

    import torch
    from mlflow.models import infer_signature

    import pydantic

    example_rows = rows_as_lists({c: example[c] for c in model.input_columns}, rows)
    signature = infer_signature(example_rows, score(model, example_rows))
    torch_version = torch.__version__.split("+")[0]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.pt"
        torch.save(model, path)
        info = mlflow.pyfunc.log_model(
            name=name, python_model=SamplesScorer(), artifacts={"torch_model": str(path)},
            signature=signature, input_example=example_rows, code_paths=[str(SIM_PACKAGE)],
            pip_requirements=[f"torch=={torch_version}", f"numpy=={np.__version__}",
                              f"pandas=={pd.__version__}", f"mlflow=={mlflow.__version__}",
                              f"pydantic=={pydantic.__version__}"])
    return info.model_uri
