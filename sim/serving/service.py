"""The scoring service: HTTP (FastAPI) around a run's logged model and the serving store.

    python -m sim.serving.service --model-uri models:/m-... --store serving/ubt.sqlite [--port 8000]
        [--tracking-uri sqlite:///mlflow.db]

``POST /score`` ``{"user_id": 7, "ts": 1719792000, "candidates": [{"item_id": 1, "category_id": 2}, ...]}``
answers ``{"scores": [...], "snapshot_date": "2024-06-30", "stale": false, ...}``: the click probability
of each candidate for the user at time ``ts`` (epoch seconds), computed on exactly the samples rows the
samples job would build for impressions at ``ts`` (:mod:`sim.serving.rows`) from UBT(D-1) of the store
and the user's behaviors of D before ``ts`` (D = the date of ``ts``). ``snapshot_date`` is the UBT
date read; ``stale`` is true when it is older than D - 1 (the export of D - 1 has not run yet).

``POST /behaviors`` ``{"user_id": 7, "behaviors": [{"ts": ..., "item_id": ..., "category_id": ...}]}``
is the append path (the day's behaviors as they happen). ``GET /health`` says the current snapshot.

Errors: 400 names the bad field of a request; 503 names the store when it is missing, unreadable or
holds no snapshot, or when its snapshot was exported with other samples settings than the model was
trained on (the differing keys: :mod:`sim.serving.trained`); 409 when the store holds only snapshots
newer than the request's time. The service does not start when the store's current snapshot and the
model's training samples differ so.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import logging
import time
from typing import Annotated, Sequence

from pydantic import BaseModel, Field

from sim.formats.packing import ID_MAX
from sim.serving.rows import RowSpec, build_rows
from sim.serving.store import SnapshotNotServable, SnapshotStore, StoreUnavailable, open_store
from sim.serving.trained import SettingsMismatch, TrainedOn, check_snapshot, trained_on

log = logging.getLogger(__name__)

MAX_CANDIDATES = 2000
SECONDS_PER_DAY = 86400


def request_date(ts: int) -> str:
    return (_dt.date(1970, 1, 1) + _dt.timedelta(days=int(ts) // SECONDS_PER_DAY)).isoformat()


Id = Annotated[int, Field(ge=0, le=ID_MAX)]


class Candidate(BaseModel):
    item_id: Id
    category_id: Id


class ScoreRequest(BaseModel):
    user_id: Id
    ts: Annotated[int, Field(gt=0, description="request time, epoch seconds")]
    candidates: Annotated[list[Candidate], Field(min_length=1, max_length=MAX_CANDIDATES)]


class Behavior(BaseModel):
    ts: Annotated[int, Field(gt=0)]
    item_id: Id
    category_id: Id


class AppendRequest(BaseModel):
    user_id: Id
    behaviors: Annotated[list[Behavior], Field(min_length=1)]


class Scorer:
    """The model and the store, without HTTP: :meth:`score` is what ``POST /score`` runs."""

    def __init__(self, model, store: SnapshotStore, model_uri: str = "", trained: TrainedOn | None = None):
        """``trained``: the samples settings the model was trained on; each snapshot read is checked
        against them (:class:`SettingsMismatch` when they differ), None: not checked."""
        self.model, self.store, self.model_uri, self.trained = model, store, model_uri, trained
        self.columns = list(model.input_columns)
        self._matching: set[int] = set()  # snapshot generations checked against ``trained``

    def check(self, info) -> None:
        """Raise :class:`SettingsMismatch` when snapshot ``info`` was exported with other samples
        settings than the model was trained on."""
        if self.trained is not None and info.generation not in self._matching:
            check_snapshot(self.trained, info.meta.get("settings"), f"UBT({info.date})", self.store.name)
            self._matching.add(info.generation)

    def rows(self, user_id: int, ts: int, items: Sequence[int], categories: Sequence[int]):
        """(the samples rows of the request, the snapshot read)."""
        with self.store.view(request_date(ts)) as v:
            self.check(v.info)
            spec = RowSpec.from_settings(v.info.meta["settings"])
            rows = build_rows(spec, user_id, ts, items, categories, v.user(user_id),
                              v.categories(user_id, categories), v.behaviors_after(user_id, ts))
            return rows, v.info

    def score(self, user_id: int, ts: int, items: Sequence[int], categories: Sequence[int]) -> dict:
        from sim.adapters.serving import score_batch
        rows, info = self.rows(user_id, ts, items, categories)
        scores = score_batch(self.model, rows.dense(self.columns))
        wanted = (_dt.date.fromisoformat(request_date(ts)) - _dt.timedelta(days=1)).isoformat()
        return {"scores": [float(s) for s in scores], "snapshot_date": info.date,
                "stale": info.date < wanted, "request_date": request_date(ts), "model_uri": self.model_uri}


def create_app(scorer: Scorer):
    """The FastAPI application of ``scorer``."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    app = FastAPI(title="SIM scoring", description=__doc__)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return JSONResponse(status_code=400, content={
            "error": f"bad request: {field}: {first.get('msg')}", "field": field,
            "errors": [{"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "message": e.get("msg")}
                       for e in errors]})

    @app.exception_handler(StoreUnavailable)
    async def store_down(request: Request, exc: StoreUnavailable):
        return JSONResponse(status_code=503, content={"error": str(exc), "store": scorer.store.name})

    @app.exception_handler(SettingsMismatch)
    async def skewed(request: Request, exc: SettingsMismatch):
        return JSONResponse(status_code=503, content={"error": str(exc), "store": scorer.store.name})

    @app.exception_handler(SnapshotNotServable)
    async def too_new(request: Request, exc: SnapshotNotServable):
        return JSONResponse(status_code=409, content={"error": str(exc), "store": scorer.store.name})

    @app.post("/score")
    def score(req: ScoreRequest) -> dict:
        started = time.perf_counter()
        out = scorer.score(req.user_id, req.ts, [c.item_id for c in req.candidates],
                           [c.category_id for c in req.candidates])
        out["server_ms"] = (time.perf_counter() - started) * 1000
        return out

    @app.post("/behaviors")
    def behaviors(req: AppendRequest) -> dict:
        n = scorer.store.append(req.user_id, [(b.ts, b.item_id, b.category_id) for b in req.behaviors])
        return {"appended": n}

    @app.get("/health")
    def health() -> dict:
        info = scorer.store.current()
        if info is None:
            raise StoreUnavailable(f"the {scorer.store.name} holds no snapshot yet")
        return {"snapshot_date": info.date, "generation": info.generation, "model_uri": scorer.model_uri}

    return app


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    from sim.adapters import tracking
    from sim.cli import setup_logging
    from sim.config import ConfigError

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-uri", default=None, help="the logged model (a run's model_uri tag)")
    p.add_argument("--run-id", default=None, help="or the run whose logged model to serve")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking store (default: MLFLOW_TRACKING_URI "
                                                         "or sqlite:///mlflow.db of the working directory)")
    p.add_argument("--store", required=True, help="the serving store jobs/export_ubt.py writes: its file, or "
                   "redis://HOST:PORT/DB (a Redis or Valkey server)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-settings-check", action="store_true",
                   help="do not check the snapshots against the samples the model was trained on (for a model "
                        "no sim.train run logged, e.g. the benchmark's untrained ones)")
    args = p.parse_args(argv)
    setup_logging()
    try:
        store = open_store(args.store)
    except ConfigError as e:
        p.error(str(e))
    model_uri = args.model_uri
    if model_uri is None:
        if args.run_id is None:
            p.error("give --model-uri or --run-id")
        model_uri = tracking.run_tag(args.run_id, "model_uri", args.tracking_uri)
        if model_uri is None:
            p.error(f"run {args.run_id} has no model_uri tag (no logged model)")
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    run_id = None if args.no_settings_check else args.run_id or tracking.model_run_id(model_uri, args.tracking_uri)
    if run_id is None and not args.no_settings_check:
        p.error(f"{model_uri} names no training run: give --run-id (its samples settings are checked against "
                "the store's snapshot), or --no-settings-check")
    trained, info = None, None
    try:
        info = store.current()
    except StoreUnavailable as e:  # served as 503 until an export creates it
        log.warning("%s", e)
    if args.no_settings_check:
        log.warning("the snapshots are not checked against the samples %s was trained on (--no-settings-check)",
                    model_uri)
    else:
        try:  # before the model is loaded: a store that cannot serve it fails fast
            trained = trained_on(run_id, args.tracking_uri)
            if info is not None:
                check_snapshot(trained, info.meta.get("settings"), f"UBT({info.date})", store.name)
        except SettingsMismatch as e:
            log.error("%s", e)
            return 2
    scorer = Scorer(tracking.load_scoring_model(model_uri, args.tracking_uri), store, model_uri, trained)
    log.info("serving %s from %s, current snapshot UBT(%s)", model_uri, store.name, info.date if info else None)
    uvicorn.run(create_app(scorer), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
