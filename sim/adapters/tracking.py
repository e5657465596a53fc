"""MLflow behind one small module. Nothing else in the code imports mlflow.

The tracking URI defaults to a SQLite file in the working directory (``sqlite:///<cwd>/mlflow.db``);
``tracking_uri`` in the experiment config or ``MLFLOW_TRACKING_URI`` selects any other store. Only rank 0
of a Horovod job calls into this module.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

log = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def resolve_tracking_uri(uri: str | None) -> str:
    if not uri:
        return default_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # A relative SQLite path is relative to the working directory; make it absolute once.
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def configure(uri: str | None = None) -> str:
    import mlflow
    uri = resolve_tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def ensure_experiment(name: str, uri: str) -> None:
    """Select experiment ``name``, creating it with artifacts beside a SQLite store (not the cwd)."""
    import mlflow
    if mlflow.get_experiment_by_name(name) is None and uri.startswith("sqlite:///"):
        root = Path(uri[len("sqlite:///"):]).parent / "mlartifacts"
        try:
            mlflow.create_experiment(name, artifact_location=root.as_uri())
        except Exception:  # another process created it first
            pass
    mlflow.set_experiment(name)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}} -> {'a.b': 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


@contextlib.contextmanager
def run(experiment: str, run_name: str | None = None, tags: Mapping[str, str] | None = None,
        uri: str | None = None, run_id: str | None = None) -> Iterator[str]:
    """Start (or, with ``run_id``, resume) a run; an exception inside marks it FAILED. Yields the run id."""
    import mlflow
    uri = configure(uri)
    ensure_experiment(experiment, uri)
    active = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name,
                              tags=dict(tags or {}))
    try:
        yield active.info.run_id
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


def param_value(v: Any) -> str:
    """A config value as a plain MLflow param that ``search_runs`` filters and the UI shows as written:
    dates as ISO strings, lists as comma-separated plain values, None as the empty string (never a
    Python repr such as ``[datetime.date(2024, 7, 1)]``)."""
    if v is None:
        return ""
    if isinstance(v, (_dt.date, _dt.datetime)):
        return v.isoformat()
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ",".join(param_value(x) for x in v)
    return str(v)


def log_params(params: Mapping[str, Any]) -> None:
    import mlflow
    flat = {k: param_value(v)[:6000] for k, v in flatten(params).items()}
    items = list(flat.items())
    for i in range(0, len(items), 100):  # the REST API caps a batch at 100 params
        mlflow.log_params(dict(items[i:i + 100]))


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    import mlflow
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def set_tags(tags: Mapping[str, Any]) -> None:
    import mlflow
    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_artifact(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    import mlflow
    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_figure(figure, name: str) -> None:
    import mlflow
    mlflow.log_figure(figure, name)


def log_table(df, name: str) -> None:
    """Log a pandas DataFrame as a Parquet artifact ``name``."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / name
        df.to_parquet(p, index=False)
        log_artifact(p)


def log_torch_model(model, input_example: Mapping[str, Any], name: str = "model") -> None:
    """Log a torch model with a signature inferred from ``input_example`` (dict of numpy arrays).

    The requirements are given (torch, numpy) and the model's code travels with it (``code_paths``:
    the ``sim`` package its pickled classes live in), so MLflow neither infers requirements by loading
    the model in a subprocess (seconds per run) nor needs ``sim`` installed where the model is loaded.
    The example itself is not stored: MLflow's pyfunc serving takes one tensor or DataFrame, not the
    dict of sequences the model reads, and would only warn that it cannot validate it. The sequence
    inputs are declared ``(-1, -1)``: any batch size, any length (batches are padded to their longest
    row, so the example's width says nothing).
    """
    import mlflow
    import mlflow.pytorch
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import Schema, TensorSpec
    import numpy as np
    import torch

    model.eval()
    with torch.no_grad():
        out = model({k: torch.as_tensor(v) for k, v in input_example.items()})
    logits = out["logit"] if isinstance(out, Mapping) else out
    signature = infer_signature(dict(input_example), logits.numpy())
    signature = ModelSignature(Schema([TensorSpec(s.type, (-1,) * len(s.shape), s.name)
                                       for s in signature.inputs.inputs]), signature.outputs)
    torch_version = torch.__version__.split("+")[0]
    mlflow.pytorch.log_model(model, name=name, signature=signature,
                             pip_requirements=[f"torch=={torch_version}", f"numpy=={np.__version__}"],
                             code_paths=[str(Path(__file__).resolve().parent)])


def search_runs(experiments: list[str], uri: str | None = None, filter_string: str = ""):
    """Runs of the named experiments as a pandas DataFrame (MLflow's own search_runs)."""
    import mlflow
    configure(uri)
    return mlflow.search_runs(experiment_names=experiments, filter_string=filter_string)


def download_artifact(run_id: str, path: str, uri: str | None = None) -> str:
    import mlflow
    configure(uri)
    return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)


def metric_history(run_id: str, key: str, uri: str | None = None) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient
    client = MlflowClient(resolve_tracking_uri(uri))
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
