"""MLflow behind one small module: tracking, and the logged model as a pyfunc that scores samples rows
(:func:`log_scoring_model`; the scoring itself is :mod:`sim.adapters.serving`). Nothing else in the code
imports mlflow.

The tracking URI defaults to a SQLite file in the working directory (``sqlite:///<cwd>/mlflow.db``);
``tracking_uri`` in the experiment config or ``MLFLOW_TRACKING_URI`` selects any other store. Only rank 0
of a Horovod job calls into this module.
"""
from __future__ import annotations

import contextlib
import functools
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


class TrackingUnreachable(RuntimeError):
    """The MLflow tracking server of the config does not answer; the message says where we tried."""


def check_reachable(uri: str | None, timeout: float = 10.0) -> str:
    """Fail fast, before any training, when the tracking store is an MLflow server that does not answer
    (MLflow's own client would retry for minutes, after the epochs ran). Returns the resolved URI.
    Other stores (a SQLite file, a local directory) are created on first use and need no check."""
    import urllib.error
    import urllib.request

    uri = resolve_tracking_uri(uri)
    if uri.startswith(("http://", "https://")):
        probe = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
        try:
            with urllib.request.urlopen(probe, timeout=timeout) as r:
                r.read()
        except urllib.error.HTTPError as e:
            if e.code >= 500 or e.code == 404:
                raise TrackingUnreachable(f"the MLflow tracking server at {uri} answered {e.code} to {probe}; "
                                          "is it an MLflow server? Set tracking_uri to one.") from e
        except (urllib.error.URLError, OSError) as e:
            raise TrackingUnreachable(
                f"no MLflow tracking server answers at {uri} ({getattr(e, 'reason', e)}; tried {probe} for "
                f"{timeout:.0f} s): start it (`mlflow server ...`) or set tracking_uri (or "
                "MLFLOW_TRACKING_URI) to a store that exists") from e
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


def __getattr__(name: str):
    """``SamplesScorer``, built on first access (it subclasses MLflow's PythonModel, and importing this
    module must not import mlflow); a logged model unpickles it by this name."""
    if name == "SamplesScorer":
        return _scorer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.lru_cache(maxsize=None)
def _scorer_class():
    import mlflow.pyfunc

    class SamplesScorer(mlflow.pyfunc.PythonModel):
        """Scores samples rows (:func:`sim.adapters.serving.score`) with the torch model saved as the
        ``torch_model`` artifact."""

        def load_context(self, context) -> None:
            import torch
            self.model = torch.load(context.artifacts["torch_model"], map_location="cpu", weights_only=False)

        def predict(self, context, model_input, params=None):
            from sim.adapters.serving import score
            return score(self.model, model_input)

    SamplesScorer.__module__, SamplesScorer.__qualname__ = __name__, "SamplesScorer"
    globals()["SamplesScorer"] = SamplesScorer
    return SamplesScorer


def log_scoring_model(model, example: Mapping[str, Any], name: str = "model", rows: int = 4) -> str:
    """Log ``model`` (a :class:`sim.models.CTRModel`) as a ``SamplesScorer`` pyfunc, with the signature
    and input example of ``rows`` rows of ``example`` (a dense batch of its input columns); the torch
    module is pickled next to the ``sim`` package it is made of (``code_paths``), so loading needs
    neither ``sim`` installed nor MLflow to infer requirements. Returns its URI (``models:/<model id>``;
    MLflow 3 keeps a logged model apart from the run's artifacts, and that URI loads it from any
    tracking store, a server's proxied artifacts included)."""
    import tempfile

    import mlflow
    import mlflow.pyfunc
    import numpy as np
    import pandas as pd
    import pydantic
    import torch
    from mlflow.models import infer_signature

    from sim.adapters.serving import SIM_PACKAGE, rows_as_lists, score

    example_rows = rows_as_lists({c: example[c] for c in model.input_columns}, rows)
    signature = infer_signature(example_rows, score(model, example_rows))
    torch_version = torch.__version__.split("+")[0]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.pt"
        torch.save(model, path)
        info = mlflow.pyfunc.log_model(
            name=name, python_model=_scorer_class()(), artifacts={"torch_model": str(path)},
            signature=signature, input_example=example_rows, code_paths=[str(SIM_PACKAGE)],
            pip_requirements=[f"torch=={torch_version}", f"numpy=={np.__version__}",
                              f"pandas=={pd.__version__}", f"mlflow=={mlflow.__version__}",
                              f"pydantic=={pydantic.__version__}"])
    return info.model_uri


def load_scoring_model(model_uri: str, uri: str | None = None):
    """The torch model of a logged ``SamplesScorer`` pyfunc (:func:`log_scoring_model`; ``model_uri``
    as the run's ``model_uri`` tag says, or ``runs:/<run id>/model``), loaded through MLflow from
    tracking store ``uri``: what the online scorer (sim.serving) runs, the same module as the pyfunc's
    ``predict``."""
    import mlflow.pyfunc
    configure(uri)
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().model


def run_tag(run_id: str, key: str, uri: str | None = None) -> str | None:
    """A tag of a run (e.g. ``model_uri``), None if it has none."""
    from mlflow.tracking import MlflowClient
    return MlflowClient(resolve_tracking_uri(uri)).get_run(run_id).data.tags.get(key)


def model_run_id(model_uri: str, uri: str | None = None) -> str | None:
    """The run that logged ``model_uri`` (``models:/<model id>`` or ``runs:/<run id>/...``), None when
    the model names none."""
    if model_uri.startswith("runs:/"):
        return model_uri[len("runs:/"):].split("/", 1)[0]
    if model_uri.startswith("models:/m-"):
        from mlflow.tracking import MlflowClient
        model = MlflowClient(resolve_tracking_uri(uri)).get_logged_model(model_uri[len("models:/"):].split("/")[0])
        return model.source_run_id
    return None


def params_of_run(run_id: str, uri: str | None = None) -> dict[str, str]:
    """The params a run logged, from tracking store ``uri``."""
    from mlflow.tracking import MlflowClient
    return dict(MlflowClient(resolve_tracking_uri(uri)).get_run(run_id).data.params)


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


def run_params(run_id: str) -> dict[str, str]:
    """The params a run logged (of the active tracking URI)."""
    import mlflow
    return dict(mlflow.get_run(run_id).data.params)
