"""The training loop, in parts that read alone: :func:`setup` (model, optimizer, schedule, loader, restored
checkpoint), :func:`run_epoch`, :func:`validate_and_pick`, :func:`save_checkpoint` and
:func:`final_test_and_log`, put together by :func:`train`. Which rows a rank reads, and in how many steps,
is the :class:`~sim.training.loader.ShardedLoader`'s alone; on which device a rank trains,
:mod:`sim.training.device`'s.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from sim.adapters.delta_io import MissingTableError
from sim.config import ConfigError
from sim.config.experiment import SPLITS
from sim.faults import crash_point, dump_weights
from sim.training.experiment import DataManifest, _to_tensors, date_range, load_item_topics, resolve_data
from sim.training.device import Placement, place, to_device
from sim.training.loader import ShardedLoader
from sim.training.optim import lr_schedule, make_optimizer
from sim.training.search_prior import fill_search_prior

log = logging.getLogger("sim.train")


# -------------------------------------------------------------------------------------------- training
# Settings a --resume may change without making it another run (a GPU run may continue on the CPU).
_RESUMABLE_KEYS = {"train": ("epochs", "checkpoint_dir", "threads", "device", "loader_workers"),
                   "": ("tracking_uri",)}


def checkpoint_dir(cfg: dict) -> Path:
    """Where one run keeps its checkpoint: ``<train.checkpoint_dir>/<experiment>/<expid>/<run key>``.

    The run key is the seed and a hash of the resolved configuration (less what ``--resume`` may change:
    the epoch budget, fault injection, threads, paths), so two seeds or two settings of one expid never
    share, and a fresh run never deletes, another run's checkpoint; ``--resume`` with the same settings
    finds its own."""
    keep = copy.deepcopy(cfg)
    for section, keys in _RESUMABLE_KEYS.items():
        target = keep.get(section, {}) if section else keep
        for k in keys:
            target.pop(k, None)
    digest = hashlib.sha1(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:10]
    root = Path(cfg["train"]["checkpoint_dir"])
    return root / cfg["experiment"] / cfg["expid"] / f"seed{cfg['train']['seed']}-{digest}"


# Beside a run's checkpoints: the data it trains on (DataManifest), what --resume reads again.
MANIFEST_FILE = "manifest.json"


def resume_manifest(cfg: dict) -> DataManifest:
    """The data ``--resume`` trains on: the samples version the run started on, as its checkpoint
    directory records it (:data:`MANIFEST_FILE`), resolved again from the Delta log at that version
    (time travel), whatever the table's latest version is now.

    A run is one snapshot. The run key (:func:`checkpoint_dir`) holds ``samples_version`` only when the
    experiment pins one, so after a samples rebuild an unpinned resume would otherwise train its
    remaining epochs on other rows while its checkpoint and the params MLflow logged at its start name
    the old version. So the resume continues on the old version (and says so when the table has moved
    on); a run on the new version is a new run: without ``--resume`` (the same settings start over in
    this checkpoint directory), or pinned with ``--set samples_version=N`` (a run key of its own). When
    the log can no longer give the recorded version (expired log entries, a table rewritten elsewhere),
    the resume is refused, naming both versions. Raises :class:`ConfigError` before any worker starts."""
    from sim.adapters import delta_io
    ckpt = checkpoint_dir(cfg)
    if not (ckpt / "last.pt").is_file():
        raise ConfigError(f"--resume given but no checkpoint in {ckpt}: start the run without --resume")
    try:
        recorded = DataManifest.from_json((ckpt / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        raise ConfigError(f"the checkpoint in {ckpt} does not record the samples version it trained on: "
                          "start the run again without --resume") from None
    was = recorded.samples_version
    if not delta_io.log_exists(recorded.samples_path):
        raise ConfigError(f"--resume: the run trained on samples version {was} of {recorded.samples_path}, "
                          "where no Delta table is any more: restore it, or start a new run without --resume")
    latest = delta_io.open_log(recorded.samples_path).version()
    try:
        manifest = resolve_data({**cfg, "samples_version": was})
    except (ConfigError, MissingTableError) as e:
        raise ConfigError(f"--resume: the run trained on samples version {was} of {recorded.samples_path}, "
                          f"which its log can no longer give ({e}); the table is at version {latest}: start a "
                          f"new run on version {latest} without --resume, or pin another with --set "
                          "samples_version=N") from None
    if latest != was:
        log.warning("resuming on samples version %d of %s, the version this run started on; the table is "
                    "now at version %d, which a new run (without --resume) trains on", was,
                    recorded.samples_path, latest)
    return manifest


def data_for(cfg: dict, resume: bool) -> DataManifest:
    """What a run trains on: the latest (or pinned) samples snapshot, or, with ``resume``, the one the
    run started on (:func:`resume_manifest`)."""
    return resume_manifest(cfg) if resume else resolve_data(cfg)


def _save_checkpoint(ckpt_dir: Path, state: dict, manifest: DataManifest) -> None:
    import torch

    from sim.adapters import hvd
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / f"{MANIFEST_FILE}.tmp").write_text(manifest.to_json())
    os.replace(ckpt_dir / f"{MANIFEST_FILE}.tmp", ckpt_dir / MANIFEST_FILE)  # before last.pt names it
    tmp = ckpt_dir / "last.pt.tmp"
    torch.save(hvd.to_cpu(state), tmp)  # host tensors: the run continues on a GPU or on the CPU
    shutil.copyfile(tmp, ckpt_dir / f"epoch_{state['epoch']}.pt")
    os.replace(tmp, ckpt_dir / "last.pt")  # atomic: a crash never leaves a half-written checkpoint


def _load_checkpoint(ckpt_dir: Path) -> dict | None:
    import torch
    p = ckpt_dir / "last.pt"
    return torch.load(p, map_location="cpu", weights_only=False) if p.is_file() else None


@dataclasses.dataclass
class Best:
    """The epoch validation picked so far (its weights stay on every rank; only rank 0 decides)."""
    epoch: int = 0
    val_auc: float = float("-inf")
    state: dict | None = None


@dataclasses.dataclass
class Session:
    """One rank's training: what :func:`setup` builds, and the state the epochs advance."""
    cfg: dict
    manifest: DataManifest
    rank: int
    size: int
    model: Any
    optimizer: Any
    scheduler: Any
    loader: ShardedLoader  # the rank's shard of the train files, its batches and steps per epoch
    ckpt_dir: Path
    placement: Placement  # the rank's device and how its gradients are averaged
    item_topic: Any = None
    start_epoch: int = 0
    run_id: str | None = None
    best: Best = dataclasses.field(default_factory=Best)
    since_best: int = 0

    @property
    def eval_batch(self) -> int:
        return self.cfg["train"]["eval_batch_size"]


def setup(cfg: dict, manifest: DataManifest | None, resume: bool) -> Session:
    """Join the Horovod job, take the rank's device, seed, build the model on it, its optimizer and
    learning-rate schedule and the train loader; restore the run's checkpoint with ``resume`` (else clear
    it), then start every rank from rank 0's weights and optimizer state. Without ``manifest``, rank 0
    resolves the data and broadcasts it."""
    import torch

    from sim.adapters import hvd
    from sim.models import build_model

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    if manifest is None:
        manifest = hvd.broadcast_object(data_for(cfg, resume) if rank == 0 else None, name="manifest")
    t = cfg["train"]
    placement = place(t["device"], hvd.local_rank(), hvd.gpu_operations())
    torch.set_num_threads(int(t.get("threads") or max(1, (os.cpu_count() or 2) // size)))
    seed = int(t["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed)

    model = build_model(cfg["model"]["name"], {k: v for k, v in cfg["model"].items() if k != "name"})
    if rank == 0 and not resume:  # the other ranks take it with rank 0's weights below
        fill_search_prior(model, manifest.files["train"])
    model.to(placement.device)  # before the optimizer: its state follows the parameters' device
    optimizer = hvd.distributed_optimizer(make_optimizer(model, t), model,
                                          through_host=placement.through_host)
    loader = ShardedLoader(manifest.files["train"], list(dict.fromkeys([*model.input_columns, "label"])),
                           rank=rank, size=size, batch_size=int(t["batch_size"]), seed=seed,
                           trim=model.sequences, bucket_batches=t["length_buckets"],
                           workers=t["loader_workers"], shuffle_groups=t["shuffle_groups"])
    schedule = lr_schedule(t, size, loader.steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.factor(step))
    item_topic = load_item_topics(cfg["lakehouse"])
    s = Session(cfg, manifest, rank, size, model, optimizer, scheduler, loader, checkpoint_dir(cfg),
                placement, item_topic.to(placement.device) if item_topic is not None else None)
    if resume:
        state = _load_checkpoint(s.ckpt_dir)  # host tensors, whichever device wrote them
        if state is None:
            raise ConfigError(f"--resume given but no checkpoint in {s.ckpt_dir}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])  # moves the state to the parameters' device
        scheduler.load_state_dict(state["scheduler"])
        s.start_epoch, s.run_id = int(state["epoch"]), state.get("run_id")
        s.best = Best(**state["best"])
        s.since_best = int(state.get("since_best", 0))
    elif rank == 0 and s.ckpt_dir.exists():
        shutil.rmtree(s.ckpt_dir)
    hvd.broadcast_model_and_optimizer(model, optimizer)
    return s


def run_epoch(s: Session, epoch: int) -> tuple[float, float]:
    """Epoch ``epoch`` (from 0) over the rank's shard: ``loader.steps_per_epoch`` optimizer steps on every
    rank, each row of the train files once over all ranks. Returns (mean loss over the ranks, seconds)."""
    import torch
    from tqdm import tqdm

    from sim.adapters import hvd

    started = time.perf_counter()
    s.model.train()
    losses = []
    desc = f"{s.cfg['expid']} epoch {epoch + 1}/{s.cfg['train']['epochs']}"
    # A bar only on an interactive terminal: under horovodrun or in a log it is thousands of lines.
    with tqdm(total=s.loader.steps_per_epoch, desc=desc, disable=s.rank != 0 or not sys.stderr.isatty(),
              file=sys.stderr, leave=False) as bar:
        for batch in s.loader.epoch(epoch):
            batch = to_device(_to_tensors(batch), s.placement.device)
            loss = s.model.loss(s.model(batch), batch["label"].float())
            s.optimizer.zero_grad()
            loss.backward()
            s.optimizer.step()
            s.scheduler.step()
            losses.append(loss.detach())  # no host synchronisation per step on a GPU
            bar.update(1)
    mean_loss = float(np.mean(torch.stack(losses).double().cpu().numpy())) if losses else float("nan")
    elapsed = time.perf_counter() - started
    return hvd.allreduce_mean(mean_loss, name=f"train_loss.{epoch}"), elapsed


def validate_and_pick(s: Session, epoch: int, train_loss: float, elapsed: float) -> None:
    """Score the validation files after ``epoch`` epochs; rank 0 logs the epoch's metrics and decides
    whether it beats the best validation AUC so far, every rank keeps that epoch's weights if so."""
    from sim.adapters import hvd, tracking
    from sim.training.evaluation import ctr_metrics, evaluate, search_metrics

    ev = evaluate(s.model, s.manifest.files["valid"], s.eval_batch, s.rank, s.size, s.item_topic,
                  s.cfg["train"]["loader_workers"])
    decision = None
    if s.rank == 0:
        val = {f"val_{k}": v for k, v in ctr_metrics(ev.pred).items()}
        decision = (val["val_auc"] > s.best.val_auc, val["val_auc"])
        epoch_metrics = {**val, **search_metrics(ev, _search_mode(s.model), s.item_topic is not None),
                         "train_loss": train_loss, "samples_per_sec": s.loader.rows / elapsed,
                         "lr": s.scheduler.get_last_lr()[0]}
        tracking.log_metrics(epoch_metrics, step=epoch)
        # stdout, not logging: MLflow's database migrations (alembic fileConfig) disable the loggers
        # that exist when a store is first created.
        print(f"{s.cfg['expid']} epoch {epoch}/{s.cfg['train']['epochs']}: "
              + ", ".join(f"{k}={v:.4f}" for k, v in epoch_metrics.items()), flush=True)
    improved, val_auc = hvd.broadcast_object(decision, name=f"improved.{epoch}")
    if improved:
        s.best = Best(epoch, float(val_auc), {k: v.detach().clone() for k, v in s.model.state_dict().items()})
    s.since_best = 0 if improved else s.since_best + 1


def save_checkpoint(s: Session, epoch: int, run_id: str | None) -> None:
    """Rank 0 writes the state after ``epoch`` epochs (weights, optimizer, schedule, best epoch, patience
    count, MLflow run) to the run's checkpoint directory; every rank waits for it."""
    from sim.adapters import hvd
    if s.rank == 0:
        _save_checkpoint(s.ckpt_dir, {"epoch": epoch, "model": s.model.state_dict(),
                                      "optimizer": s.optimizer.state_dict(),
                                      "scheduler": s.scheduler.state_dict(),
                                      "best": dataclasses.asdict(s.best), "since_best": s.since_best,
                                      "run_id": run_id},
                         s.manifest)
    hvd.barrier()


def final_test_and_log(s: Session, epochs_run: int) -> dict[str, float]:
    """The reported figures: the test files scored by the epoch validation picked. Rank 0 logs them with
    the reference rows, the test predictions, the model and a weight checksum, and returns them."""
    import torch

    from sim.adapters import tracking
    from sim.training.evaluation import ctr_metrics, evaluate

    if s.best.state is not None:
        s.model.load_state_dict(s.best.state)
    test = evaluate(s.model, s.manifest.files["test"], s.eval_batch, s.rank, s.size, s.item_topic,
                    s.cfg["train"]["loader_workers"])
    if s.rank != 0:
        return {}
    s.model.cpu()  # training is over: the logged model and its checksum are the same from any device
    metrics = {**ctr_metrics(test.pred), "best_epoch": float(s.best.epoch),
               "best_val_auc": s.best.val_auc, "epochs_run": float(epochs_run),
               **_reference_metrics(s.cfg, s.manifest, test.pred)}
    tracking.log_metrics(metrics)
    print(f"{s.cfg['expid']} test (epoch {s.best.epoch} picked on validation): "
          + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)
    import pandas as pd
    tracking.log_table(pd.DataFrame(test.pred), "test_predictions.parquet")
    model_uri = tracking.log_scoring_model(s.model, _input_example(s.manifest.paths("test"), s.model.input_columns))
    tracking.set_tags({"model_uri": model_uri})  # what `mlflow models serve -m` and pyfunc.load_model take
    weights = torch.cat([p.detach().flatten() for p in s.model.parameters()]).numpy()
    tracking.log_metrics({"final_weight_checksum": float(np.abs(weights).sum())})
    return metrics


def _search_mode(model) -> str | None:
    return model.gsu.mode if getattr(model, "gsu", None) is not None else None


def _reference_metrics(cfg: dict, manifest: DataManifest, pred: dict[str, np.ndarray]) -> dict[str, float]:
    """Oracle AUCs (synthetic data), the item-popularity AUC and the gradient-boosting reference on the
    test impressions, with the test rows' hard-search and long-length statistics
    (:mod:`sim.training.reference`, on the manifest's files: the same figure for every run of a split)."""
    from sim.adapters import delta_io
    from sim.training.evaluation import oracle_metrics, popularity_auc
    from sim.training.reference import cached_gbdt_reference, data_statistics

    out = oracle_metrics(pred)
    behaviors = delta_io.table_path(cfg["lakehouse"], "behaviors")
    try:
        out["popularity_auc"] = popularity_auc(pred, behaviors, date_range(cfg, "test")[0])
    except Exception as e:  # a reference row only: never fail a finished training for it
        log.warning("item popularity reference not computed from %s: %s", behaviors, e)
    try:
        out.update(cached_gbdt_reference(manifest, behaviors, Path(cfg["train"]["checkpoint_dir"]) / "_references"))
    except Exception as e:  # likewise
        log.warning("gradient-boosting reference not computed for %s: %s", manifest.samples_path, e)
    try:
        out.update(data_statistics(manifest, "test"))
    except Exception as e:  # likewise
        log.warning("test-row statistics not computed for %s: %s", manifest.samples_path, e)
    return out


def train(cfg: dict, manifest: DataManifest | None = None, resume: bool = False,
          config_path: str | None = None) -> dict[str, float]:
    """Train one experiment on every rank of the Horovod job; returns the test metrics of the epoch
    validation picked (on rank 0; other ranks return an empty dict).

    Epochs run until ``train.epochs`` or until ``train.patience`` epochs bring no better validation AUC;
    each is checkpointed, so ``resume`` continues the run (and its MLflow run) after the last one."""
    from sim.adapters import tracking

    s = setup(cfg, manifest, resume)
    t = cfg["train"]
    epochs, patience = t["epochs"], t["patience"]
    run_ctx = (tracking.run(cfg["experiment"], run_name=cfg["expid"], uri=cfg.get("tracking_uri"),
                            run_id=s.run_id, tags={"model": cfg["model"]["name"]})
               if s.rank == 0 else contextlib.nullcontext())
    with run_ctx as active_run_id:
        if s.rank == 0:
            params = _run_params(cfg, s.manifest, s.size, s.loader.steps_per_epoch, s.placement)
            if resume:
                _log_resume(active_run_id, s.start_epoch, params)
            else:
                _log_run_params(params, cfg, config_path)
        epoch = s.start_epoch
        while epoch < epochs and not (patience and s.since_best >= patience):
            train_loss, elapsed = run_epoch(s, epoch)
            epoch += 1
            validate_and_pick(s, epoch, train_loss, elapsed)
            save_checkpoint(s, epoch, active_run_id)
            crash_point(f"train.epoch_{epoch}_checkpointed")
        metrics = final_test_and_log(s, epoch)
        dump_weights(s.model, s.rank)
    return metrics


def _run_params(cfg: dict, manifest: DataManifest, size: int, steps_per_epoch: int,
                placement: Placement) -> dict:
    """What a run logs as its MLflow params: the resolved config, the processes, the device, the data,
    the learning-rate rule and what makes it comparable (:mod:`sim.training.comparability`)."""
    from sim.training.comparability import comparison_params
    return {**cfg, "horovod": {"size": size}, "device": placement.params(),
            "data": {"samples_version": manifest.samples_version, "samples_path": manifest.samples_path,
                     **{f"{s}_rows": manifest.rows(s) for s in SPLITS},
                     "train_files": len(manifest.files["train"]), "steps_per_epoch": steps_per_epoch},
            "schedule": lr_schedule(cfg["train"], size, steps_per_epoch).params(cfg["train"]),
            "comparison": comparison_params(cfg, manifest.samples_path, manifest.samples_version, size)}


def _log_run_params(params: dict, cfg: dict, config_path: str | None) -> None:
    from sim.adapters import tracking
    tracking.log_params(params)
    tracking.set_tags({"samples_version": params["data"]["samples_version"]})
    if config_path:
        tracking.log_artifact(config_path, "config")
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "resolved_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        tracking.log_artifact(Path(d) / "resolved_config.yaml", "config")


def _log_resume(run_id: str, epoch: int, params: dict) -> None:
    """A resumed run keeps the params of its start (MLflow params never change), and they still say
    what it trains on: the data is the same snapshot (:func:`resume_manifest`). A setting ``--resume``
    may change (epochs, threads, device, processes) and did is tagged ``resumed.<param>`` with its new
    value; ``resumed_at_epoch`` says from which epoch on."""
    from sim.adapters import tracking
    logged = tracking.run_params(run_id)
    changed = {k: tracking.param_value(v) for k, v in tracking.flatten(params).items()
               if logged.get(k) != tracking.param_value(v)[:6000]}
    tracking.set_tags({"resumed_at_epoch": epoch, **{f"resumed.{k}": v for k, v in changed.items()}})


def _input_example(files: list[str], columns: Sequence[str], rows: int = 4) -> dict[str, np.ndarray]:
    from sim.adapters import petastorm_io
    with petastorm_io.open_reader(files[:1], list(columns)) as reader:
        return next(petastorm_io.iter_batches(reader, list(columns), rows))
