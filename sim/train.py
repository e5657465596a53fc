"""Distributed training of SIM and the paper's baselines: Horovod ranks read their shard of the Delta
samples snapshot through Petastorm, train with Adam + exponential decay, evaluate AUC / logloss / gAUC over
the predictions of all ranks together, and rank 0 tracks everything in MLflow.

    horovodrun -np 2 python -m sim.train --config conf/experiments.yaml --expid sim_soft_time
    python -m sim.train --config conf/experiments.yaml --expid din --np 2   # validates, then horovodrun
    python -m sim.train --config conf/experiments.yaml --expid din          # one process

Dates are split three ways: ``train_dates`` train, ``valid_dates`` pick the epoch (the one with the best
validation AUC; ``train.patience`` epochs without improvement end training early), and ``test_dates``
give the reported figures of that epoch's model, never used to choose anything. Per epoch the run logs
the validation metrics (``val_auc``, ``val_logloss``, ``val_gauc``), ``train_loss`` and, for search
models, the search diagnostics (:mod:`sim.diagnostics`); at the end the test metrics (``auc``,
``logloss``, ``gauc``) with ``best_epoch`` and the reference rows of :mod:`sim.evaluation` (oracles,
item popularity).

The data (files of the samples snapshot for the three date ranges, with row counts and the table
version) is resolved once, from the Delta log (no JVM), before training: by the ``--np`` launcher before
any worker starts, otherwise by rank 0, which broadcasts it. Every rank takes the same number of steps
per epoch (ceil(rows / (ranks * batch))), wrapping around its shard if it is the smaller one, so no rank
waits in a collective for a batch that never comes. A reader loads only the columns the model reads.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from sim.config import ConfigError, apply_overrides, deep_merge, load_yaml
from sim.delta_io import MissingTableError

log = logging.getLogger("sim.train")

SPLITS = ("train", "valid", "test")


# ---------------------------------------------------------------------------------------------- config
def load_experiment(config_path: str | os.PathLike, expid: str, overrides: Sequence[str] = ()) -> dict:
    """``Base`` merged with the block of ``expid`` and the ``--set`` overrides, validated."""
    raw = load_yaml(config_path)
    if "Base" not in raw:
        raise ConfigError(f"{config_path} has no `Base` block")
    known = sorted(k for k in raw if k != "Base")
    if expid not in known:
        raise ConfigError(f"unknown expid {expid!r} in {config_path}; known: {', '.join(known)}")
    cfg = deep_merge(raw["Base"], raw[expid] or {})
    cfg = apply_overrides(cfg, overrides)
    cfg["expid"] = expid
    validate_config(cfg)
    return cfg


def _date_range(cfg: dict, key: str) -> tuple[str, str]:
    value = cfg.get(key)
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        raise ConfigError(f"{key} must be [first, last] dates, got {value!r}")
    try:
        first, last = (_dt.date.fromisoformat(str(v)) for v in value)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}; use YYYY-MM-DD") from None
    if first > last:
        raise ConfigError(f"{key} is empty: first date {first} is after last date {last}; swap them")
    return first.isoformat(), last.isoformat()


def validate_config(cfg: dict) -> None:
    """Checks that need no data: model name, date ranges in train < valid < test order, training numbers."""
    from sim.models import MODEL_NAMES
    name = cfg.get("model", {}).get("name")
    if name not in MODEL_NAMES:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    if "eval_dates" in cfg:
        raise ConfigError("eval_dates is split into valid_dates (picks the epoch) and test_dates (the "
                          "reported figures): set those two instead")
    ranges = [_date_range(cfg, f"{split}_dates") for split in SPLITS]
    for (a, ra), (b, rb) in zip(zip(SPLITS, ranges), list(zip(SPLITS, ranges))[1:]):
        if ra[1] >= rb[0]:
            raise ConfigError(f"{a}_dates {ra[0]}..{ra[1]} must end before {b}_dates {rb[0]}..{rb[1]} "
                              "start (train, then validation, then test, without overlap)")
    t = cfg.get("train", {})
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if int(t.get(key, 1)) < 1:
            raise ConfigError(f"train.{key} must be at least 1, got {t.get(key)}")
    if int(t.get("patience", 0)) < 0:
        raise ConfigError(f"train.patience must be >= 0 (0 = train every epoch), got {t.get('patience')}")


# ------------------------------------------------------------------------------------------------ data
@dataclasses.dataclass
class DataManifest:
    """What a run reads: the samples table version and the files of its snapshot per split."""
    samples_path: str
    samples_version: int
    files: dict[str, list[tuple[str, int]]]  # split -> (path, rows)

    def paths(self, split: str) -> list[str]:
        return [p for p, _ in self.files[split]]

    def rows(self, split: str) -> int:
        return sum(n for _, n in self.files[split])

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "DataManifest":
        d = json.loads(text)
        d["files"] = {k: [tuple(x) for x in v] for k, v in d["files"].items()}
        return cls(**d)


def resolve_data(cfg: dict) -> DataManifest:
    """List the samples snapshot's files for each split's dates, from the Delta log (no JVM)."""
    from sim import delta_io

    path = delta_io.table_path(cfg["lakehouse"], cfg.get("samples_table", "samples"))
    hint = "build it with `python jobs/build_samples.py --date D` (or check `lakehouse` in the config)"
    try:
        snap = delta_io.log_snapshot(path)
    except MissingTableError as e:
        raise MissingTableError(f"{e}; {hint}") from None
    files = {}
    for split in SPLITS:
        first, last = _date_range(cfg, f"{split}_dates")
        found = snap.between(first, last)
        if not found:
            raise ConfigError(f"no samples for {split}_dates {first}..{last} in {path} (version "
                              f"{snap.version}); dates present: {', '.join(snap.dates) or 'none'}")
        files[split] = [(f.path, f.num_rows) for f in found]
    return DataManifest(path, snap.version, files)


def load_item_topics(lakehouse: str):
    """The synthetic catalog's item -> topic tensor for the diagnostics, or None without the table."""
    from sim import delta_io
    from sim.diagnostics import item_topic_lookup
    from sim.generator import ITEM_TOPICS_TABLE

    path = delta_io.table_path(lakehouse, ITEM_TOPICS_TABLE)
    if not os.path.isdir(os.path.join(path, "_delta_log")):
        return None
    from deltalake import DeltaTable
    t = DeltaTable(path).to_pyarrow_table(columns=["item_id", "topic_id"])
    return item_topic_lookup(t.column("item_id").to_numpy(), t.column("topic_id").to_numpy())


def _to_tensors(batch: dict[str, np.ndarray]):
    import torch
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


# -------------------------------------------------------------------------------------------- training
def _checkpoint_dir(cfg: dict) -> Path:
    return Path(cfg["train"].get("checkpoint_dir", "./checkpoints")) / cfg["experiment"] / cfg["expid"]


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


def _train_epoch(model, optimizer, scheduler, files: list[str], columns: list[str], *, rank: int,
                 size: int, batch_size: int, steps: int, seed: int, epoch: int, desc: str,
                 bucket_batches: int = 0) -> float:
    """One epoch of ``steps`` optimizer steps over this rank's shard; returns its mean loss. Batches are
    cut to their longest real sequence, and rows of similar length share batches (``bucket_batches``)."""
    from tqdm import tqdm

    from sim import petastorm_io

    model.train()
    losses = []
    stride = not petastorm_io.rows_sharded_by_reader(files, size)
    with petastorm_io.open_reader(files, columns, rank=rank, size=size, num_epochs=None,
                                  shuffle=True, seed=seed + epoch) as reader:
        batches = petastorm_io.iter_batches(reader, columns, batch_size, rank=rank, size=size,
                                            stride_rows=stride, shuffle_seed=seed * 100003 + epoch * 101 + rank,
                                            trim=model.sequences, bucket_batches=bucket_batches)
        # A bar only on an interactive terminal: under horovodrun or in a log it is thousands of lines.
        with tqdm(total=steps, desc=desc, disable=rank != 0 or not sys.stderr.isatty(), file=sys.stderr,
                  leave=False) as bar:
            for _ in range(steps):
                batch = _to_tensors(next(batches))
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
    from sim import delta_io
    from sim.evaluation import oracle_metrics, popularity_auc

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

    from sim import hvd, tracking
    from sim.evaluation import ctr_metrics, evaluate, search_metrics
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

    ckpt_dir = _checkpoint_dir(cfg)
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
    steps_per_epoch = max(1, math.ceil(manifest.rows("train") / (size * batch_size)))
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
            loss = _train_epoch(model, optimizer, scheduler, manifest.paths("train"), columns, rank=rank,
                                size=size, batch_size=batch_size, steps=steps_per_epoch, seed=seed,
                                epoch=epoch, desc=f"{cfg['expid']} epoch {epoch + 1}/{epochs}",
                                bucket_batches=int(t.get("length_buckets") or 0))
            elapsed = time.perf_counter() - started
            train_loss = hvd.allreduce_mean(loss, name=f"train_loss.{epoch}")
            ev = evaluate(model, manifest.paths("valid"), eval_batch, rank, size, item_topic)
            epoch += 1
            decision = None
            if rank == 0:
                val = {f"val_{k}": v for k, v in ctr_metrics(ev.pred).items()}
                decision = (val["val_auc"] > best.val_auc, val["val_auc"])
                epoch_metrics = {**val, **search_metrics(ev, mode, item_topic is not None),
                                 "train_loss": train_loss,
                                 "samples_per_sec": steps_per_epoch * batch_size * size / elapsed,
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
        test = evaluate(model, manifest.paths("test"), eval_batch, rank, size, item_topic)
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
    from sim import tracking
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
    from sim import petastorm_io
    with petastorm_io.open_reader(files[:1], list(columns)) as reader:
        return next(petastorm_io.iter_batches(reader, list(columns), rows))


def _dump_weights(model, cfg: dict, rank: int) -> None:
    """With SIM_DUMP_WEIGHTS=DIR every rank saves its final weights (tests compare ranks)."""
    out = os.environ.get("SIM_DUMP_WEIGHTS")
    if out:
        import torch
        Path(out).mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), Path(out) / f"rank{rank}.pt")


# ------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sim.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="experiments YAML (Base + one block per expid)")
    p.add_argument("--expid", required=True, help="experiment id: a block of the config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=1 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--np", type=int, default=0,
                   help="launch horovodrun with this many processes after validating the config and data")
    p.add_argument("--manifest", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


GLOO_TIMEOUT_SECONDS = 600


def launch(args: argparse.Namespace, cfg: dict) -> int:
    """Validate data before any worker starts, then run this module under horovodrun."""
    manifest = resolve_data(cfg)
    with tempfile.TemporaryDirectory() as d:
        mpath = Path(d) / "manifest.json"
        mpath.write_text(manifest.to_json())
        # Gloo's default 30 s lets a rank starved of CPU on a busy machine fail the whole job; a rank that
        # dies still ends it at once (horovodrun watches the processes).
        cmd = [str(Path(sys.executable).parent / "horovodrun"), "-np", str(args.np), "-H",
               f"localhost:{args.np}", "--gloo", "--gloo-timeout-seconds", str(GLOO_TIMEOUT_SECONDS),
               sys.executable, "-m", "sim.train",
               "--config", args.config, "--expid", args.expid, "--manifest", str(mpath)]
        for o in args.overrides:
            cmd += ["--set", o]
        if args.resume:
            cmd.append("--resume")
        log.info("launching: %s", " ".join(cmd))
        return subprocess.call(cmd)


def main(argv: Sequence[str] | None = None) -> int:
    from sim.cli import setup_logging
    setup_logging()
    args = parse_args(argv)
    try:
        cfg = load_experiment(args.config, args.expid, args.overrides)
        if args.np:
            return launch(args, cfg)
        manifest = DataManifest.from_json(Path(args.manifest).read_text()) if args.manifest else None
        if manifest is None and "HOROVOD_RANK" not in os.environ:
            manifest = resolve_data(cfg)  # one process: fail on missing data before anything starts
        train(cfg, manifest, resume=args.resume, config_path=args.config)
    except (ConfigError, MissingTableError) as e:
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
