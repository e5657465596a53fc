"""The training loop: epochs over the rank's shard, checkpoints, evaluation per epoch, MLflow logging.
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
from typing import Sequence

import numpy as np
import yaml

from sim.config import ConfigError
from sim.training.experiment import DataManifest, _date_range, _to_tensors, load_item_topics, resolve_data
from sim.training.loader import ShardedLoader

log = logging.getLogger("sim.train")

SPLITS = ("train", "valid", "test")


# -------------------------------------------------------------------------------------------- training
# Settings a --resume may change without making it another run.
_RESUMABLE_KEYS = {"train": ("epochs", "fail_after_epoch", "checkpoint_dir", "threads"), "": ("tracking_uri",)}


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
    root = Path(cfg["train"].get("checkpoint_dir", "./checkpoints"))
    return root / cfg["experiment"] / cfg["expid"] / f"seed{cfg['train']['seed']}-{digest}"


def _save_checkpoint(ckpt_dir: Path, state: dict) -> None:
    import torch
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / "last.pt.tmp"
    torch.save(state, tmp)
    shutil.copyfile(tmp, ckpt_dir / f"epoch_{state['epoch']}.pt")
    os.replace(tmp, ckpt_dir / "last.pt")  # atomic: a crash never leaves a half-written checkpoint


def _load_checkpoint(ckpt_dir: Path) -> dict | None:
    import torch
    p = ckpt_dir / "last.pt"
    return torch.load(p, map_location="cpu", weights_only=False) if p.is_file() else None


def make_optimizer(model, t: dict):
    """Adam (the paper's optimizer); with ``train.weight_decay`` > 0, AdamW's decoupled weight decay."""
    import torch
    lr, wd = float(t["lr"]), float(t.get("weight_decay") or 0.0)
    if wd > 0:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    return torch.optim.Adam(model.parameters(), lr=lr)


@dataclasses.dataclass
class Best:
    """The epoch validation picked so far (its weights stay on every rank; only rank 0 decides)."""
    epoch: int = 0
    val_auc: float = float("-inf")
    state: dict | None = None


def _train_epoch(model, optimizer, scheduler, loader: ShardedLoader, *, rank: int, epoch: int,
                 desc: str) -> float:
    """One epoch of ``loader.steps_per_epoch`` optimizer steps over this rank's shard; returns its mean
    loss. Batches are cut to their longest real sequence, and rows of similar length share batches."""
    from tqdm import tqdm

    model.train()
    losses = []
    # A bar only on an interactive terminal: under horovodrun or in a log it is thousands of lines.
    with tqdm(total=loader.steps_per_epoch, desc=desc, disable=rank != 0 or not sys.stderr.isatty(),
              file=sys.stderr, leave=False) as bar:
        for batch in loader.epoch(epoch):
            batch = _to_tensors(batch)
            loss = model.loss(model(batch), batch["label"].float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.update(1)
    return float(np.mean(losses))


def _search_mode(model) -> str | None:
    return model.gsu.mode if getattr(model, "gsu", None) is not None else None


def _reference_metrics(cfg: dict, manifest: DataManifest, pred: dict[str, np.ndarray]) -> dict[str, float]:
    """Oracle AUCs (synthetic data) and the item-popularity AUC on the test impressions."""
    from sim.adapters import delta_io
    from sim.training.evaluation import oracle_metrics, popularity_auc

    out = oracle_metrics(pred)
    behaviors = delta_io.table_path(cfg["lakehouse"], "behaviors")
    try:
        out["popularity_auc"] = popularity_auc(pred, behaviors, _date_range(cfg, "test_dates")[0])
    except Exception as e:  # a reference row only: never fail a finished training for it
        log.warning("item popularity reference not computed from %s: %s", behaviors, e)
    return out


def train(cfg: dict, manifest: DataManifest | None = None, resume: bool = False,
          config_path: str | None = None) -> dict[str, float]:
    """Train one experiment on every rank of the Horovod job; returns the test metrics of the epoch
    validation picked (on rank 0; other ranks return an empty dict)."""
    import torch

    from sim.adapters import hvd, tracking
    from sim.training.evaluation import ctr_metrics, evaluate, search_metrics
    from sim.models import build_model

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    if manifest is None:
        manifest = hvd.broadcast_object(resolve_data(cfg) if rank == 0 else None, name="manifest")
    t = cfg["train"]
    torch.set_num_threads(int(t.get("threads") or max(1, (os.cpu_count() or 2) // size)))
    seed = int(t["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed)

    model_cfg = {k: v for k, v in cfg["model"].items() if k != "name"}
    model = build_model(cfg["model"]["name"], model_cfg)
    optimizer = hvd.distributed_optimizer(make_optimizer(model, t), model)
    rate, decay_steps = float(t.get("lr_decay_rate", 1.0)), float(t.get("lr_decay_steps", 1000))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: rate ** (s / decay_steps))

    ckpt_dir = checkpoint_dir(cfg)
    start_epoch, run_id, best, since_best = 0, None, Best(), 0
    if resume:
        state = _load_checkpoint(ckpt_dir)
        if state is None:
            raise ConfigError(f"--resume given but no checkpoint in {ckpt_dir}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, run_id = int(state["epoch"]), state.get("run_id")
        best = Best(**state["best"])
        since_best = int(state.get("since_best", 0))
    elif rank == 0 and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    hvd.broadcast_model_and_optimizer(model, optimizer)

    columns = list(dict.fromkeys([*model.input_columns, "label"]))
    batch_size, epochs, patience = int(t["batch_size"]), int(t["epochs"]), int(t.get("patience", 0))
    eval_batch = int(t.get("eval_batch_size", 1024))
    loader = ShardedLoader(manifest.files["train"], columns, rank=rank, size=size, batch_size=batch_size,
                           seed=seed, trim=model.sequences, bucket_batches=int(t.get("length_buckets") or 0))
    steps_per_epoch = loader.steps_per_epoch
    item_topic = load_item_topics(cfg["lakehouse"])
    mode = _search_mode(model)

    run_ctx = (tracking.run(cfg["experiment"], run_name=cfg["expid"], uri=cfg.get("tracking_uri"),
                            run_id=run_id, tags={"model": cfg["model"]["name"]})
               if rank == 0 else contextlib.nullcontext())
    metrics: dict[str, float] = {}
    with run_ctx as active_run_id:
        if rank == 0 and not resume:
            _log_run_params(cfg, manifest, size, steps_per_epoch, config_path)
        epoch = start_epoch
        while epoch < epochs and not (patience and since_best >= patience):
            started = time.perf_counter()
            loss = _train_epoch(model, optimizer, scheduler, loader, rank=rank, epoch=epoch,
                                desc=f"{cfg['expid']} epoch {epoch + 1}/{epochs}")
            elapsed = time.perf_counter() - started
            train_loss = hvd.allreduce_mean(loss, name=f"train_loss.{epoch}")
            ev = evaluate(model, manifest.files["valid"], eval_batch, rank, size, item_topic)
            epoch += 1
            decision = None
            if rank == 0:
                val = {f"val_{k}": v for k, v in ctr_metrics(ev.pred).items()}
                decision = (val["val_auc"] > best.val_auc, val["val_auc"])
                epoch_metrics = {**val, **search_metrics(ev, mode, item_topic is not None),
                                 "train_loss": train_loss,
                                 "samples_per_sec": loader.rows / elapsed,
                                 "lr": scheduler.get_last_lr()[0]}
                tracking.log_metrics(epoch_metrics, step=epoch)
                # stdout, not logging: MLflow's database migrations (alembic fileConfig) disable the
                # loggers that exist when a store is first created.
                print(f"{cfg['expid']} epoch {epoch}/{epochs}: "
                      + ", ".join(f"{k}={v:.4f}" for k, v in epoch_metrics.items()), flush=True)
            improved, val_auc = hvd.broadcast_object(decision, name=f"improved.{epoch}")
            if improved:
                best = Best(epoch, float(val_auc), {k: v.detach().clone() for k, v in model.state_dict().items()})
            since_best = 0 if improved else since_best + 1
            if rank == 0:
                _save_checkpoint(ckpt_dir, {"epoch": epoch, "model": model.state_dict(),
                                            "optimizer": optimizer.state_dict(),
                                            "scheduler": scheduler.state_dict(),
                                            "best": dataclasses.asdict(best), "since_best": since_best,
                                            "run_id": active_run_id})
            hvd.barrier()
            if int(t.get("fail_after_epoch") or 0) == epoch:
                raise RuntimeError(f"fault injected after epoch {epoch} (train.fail_after_epoch)")
        # The reported figures: the test impressions scored by the epoch validation picked.
        if best.state is not None:
            model.load_state_dict(best.state)
        test = evaluate(model, manifest.files["test"], eval_batch, rank, size, item_topic)
        if rank == 0:
            metrics = {**ctr_metrics(test.pred), "best_epoch": float(best.epoch),
                       "best_val_auc": best.val_auc, "epochs_run": float(epoch),
                       **_reference_metrics(cfg, manifest, test.pred)}
            tracking.log_metrics(metrics)
            print(f"{cfg['expid']} test (epoch {best.epoch} picked on validation): "
                  + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)
            import pandas as pd
            tracking.log_table(pd.DataFrame(test.pred), "test_predictions.parquet")
            tracking.log_torch_model(model, _input_example(manifest.paths("test"), model.input_columns))
            weights = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()
            tracking.log_metrics({"final_weight_checksum": float(np.abs(weights).sum())})
        _dump_weights(model, cfg, rank)
    return metrics


def _log_run_params(cfg: dict, manifest: DataManifest, size: int, steps_per_epoch: int,
                    config_path: str | None) -> None:
    from sim.adapters import tracking
    tracking.log_params({**cfg, "horovod": {"size": size},
                         "data": {"samples_version": manifest.samples_version,
                                  "samples_path": manifest.samples_path,
                                  **{f"{s}_rows": manifest.rows(s) for s in SPLITS},
                                  "train_files": len(manifest.files["train"]),
                                  "steps_per_epoch": steps_per_epoch}})
    tracking.set_tags({"samples_version": manifest.samples_version})
    if config_path:
        tracking.log_artifact(config_path, "config")
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "resolved_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        tracking.log_artifact(Path(d) / "resolved_config.yaml", "config")


def _input_example(files: list[str], columns: Sequence[str], rows: int = 4) -> dict[str, np.ndarray]:
    from sim.adapters import petastorm_io
    with petastorm_io.open_reader(files[:1], list(columns)) as reader:
        return next(petastorm_io.iter_batches(reader, list(columns), rows))


def _dump_weights(model, cfg: dict, rank: int) -> None:
    """With SIM_DUMP_WEIGHTS=DIR every rank saves its final weights (tests compare ranks)."""
    out = os.environ.get("SIM_DUMP_WEIGHTS")
    if out:
        import torch
        Path(out).mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), Path(out) / f"rank{rank}.pt")


