"""Distributed training of SIM and the paper's baselines: Horovod ranks read their shard of the Delta
samples snapshot through Petastorm, train with Adam + exponential decay, evaluate AUC / logloss / gAUC over
the predictions of all ranks together, and rank 0 tracks everything in MLflow.

    horovodrun -np 2 python -m sim.train --config conf/experiments.yaml --expid sim_soft_time
    python -m sim.train --config conf/experiments.yaml --expid din --np 2   # validates, then horovodrun
    python -m sim.train --config conf/experiments.yaml --expid din          # one process

The data (files of the samples snapshot for the train and eval dates, with row counts and the table
version) is resolved once, from the Delta log (no JVM), before training: by the ``--np`` launcher before
any worker starts, otherwise by rank 0, which broadcasts it. Every rank takes the same number of steps
per epoch (ceil(rows / (ranks * batch))), wrapping around its shard if it is the smaller one, so no rank
waits in a collective for a batch that never comes.
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
from sim.schema import SAMPLE_COLUMNS

log = logging.getLogger("sim.train")

EVAL_COLUMNS = ("impression_id", "user_id", "label", "d_category", "long_len")


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
    """Checks that need no data: model name, date ranges, training numbers."""
    from sim.models import MODEL_NAMES
    name = cfg.get("model", {}).get("name")
    if name not in MODEL_NAMES:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    _date_range(cfg, "train_dates")
    _date_range(cfg, "eval_dates")
    t = cfg.get("train", {})
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if int(t.get(key, 1)) < 1:
            raise ConfigError(f"train.{key} must be at least 1, got {t.get(key)}")


# ------------------------------------------------------------------------------------------------ data
@dataclasses.dataclass
class DataManifest:
    """What a run reads: the samples table version and the files of its snapshot per date range."""
    samples_path: str
    samples_version: int
    train_files: list[tuple[str, int]]
    eval_files: list[tuple[str, int]]

    @property
    def train_rows(self) -> int:
        return sum(n for _, n in self.train_files)

    @property
    def eval_rows(self) -> int:
        return sum(n for _, n in self.eval_files)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "DataManifest":
        d = json.loads(text)
        d["train_files"] = [tuple(x) for x in d["train_files"]]
        d["eval_files"] = [tuple(x) for x in d["eval_files"]]
        return cls(**d)


def resolve_data(cfg: dict) -> DataManifest:
    """List the samples snapshot's files for the train and eval dates, from the Delta log (no JVM)."""
    from sim import delta_io

    path = delta_io.table_path(cfg["lakehouse"], cfg.get("samples_table", "samples"))
    hint = "build it with `python jobs/build_samples.py --date D` (or check `lakehouse` in the config)"
    try:
        snap = delta_io.log_snapshot(path)
    except MissingTableError as e:
        raise MissingTableError(f"{e}; {hint}") from None
    parts = {}
    for key in ("train_dates", "eval_dates"):
        first, last = _date_range(cfg, key)
        files = snap.between(first, last)
        if not files:
            raise ConfigError(f"no samples for {key} {first}..{last} in {path} (version {snap.version}); "
                              f"dates present: {', '.join(snap.dates) or 'none'}")
        parts[key] = [(f.path, f.num_rows) for f in files]
    return DataManifest(path, snap.version, parts["train_dates"], parts["eval_dates"])


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


def evaluate(model, files: list[str], batch_size: int, rank: int, size: int) -> dict[str, np.ndarray]:
    """Predict this rank's shard of the eval files and gather every rank's predictions."""
    import torch
    from sim import hvd, petastorm_io

    columns = list(SAMPLE_COLUMNS)
    stride = not petastorm_io.rows_sharded_by_reader(files, size)
    out: dict[str, list[np.ndarray]] = {c: [] for c in (*EVAL_COLUMNS, "score")}
    model.eval()
    with torch.no_grad(), petastorm_io.open_reader(files, columns, rank=rank, size=size) as reader:
        for batch in petastorm_io.iter_batches(reader, columns, batch_size, rank=rank, size=size,
                                               stride_rows=stride):
            logits = model(_to_tensors(batch))["logit"]
            out["score"].append(torch.sigmoid(logits).double().numpy())
            for c in EVAL_COLUMNS:
                out[c].append(batch[c])
    gathered = {}
    for c, parts in out.items():
        dtype = np.float64 if c == "score" else np.int64
        local = np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
        gathered[c] = hvd.allgather(torch.from_numpy(local), name=f"eval.{c}").numpy()
    return gathered


def eval_metrics(pred: dict[str, np.ndarray]) -> dict[str, float]:
    from sim.metrics import auc, gauc, logloss
    return {"auc": auc(pred["label"], pred["score"]),
            "logloss": logloss(pred["label"], pred["score"]),
            "gauc": gauc(pred["user_id"], pred["label"], pred["score"]),
            "eval_rows": float(len(pred["label"]))}


def train(cfg: dict, manifest: DataManifest | None = None, resume: bool = False,
          config_path: str | None = None) -> dict[str, float]:
    """Train one experiment on every rank of the Horovod job; returns the final eval metrics."""
    import torch
    from tqdm import tqdm

    from sim import hvd, petastorm_io, tracking
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
    optimizer = hvd.distributed_optimizer(torch.optim.Adam(model.parameters(), lr=float(t["lr"])), model)
    rate, decay_steps = float(t.get("lr_decay_rate", 1.0)), float(t.get("lr_decay_steps", 1000))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: rate ** (s / decay_steps))

    ckpt_dir = _checkpoint_dir(cfg)
    start_epoch, run_id = 0, None
    if resume:
        state = _load_checkpoint(ckpt_dir)
        if state is None:
            raise ConfigError(f"--resume given but no checkpoint in {ckpt_dir}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, run_id = int(state["epoch"]), state.get("run_id")
    elif rank == 0 and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    hvd.broadcast_model_and_optimizer(model, optimizer)

    train_files = [p for p, _ in manifest.train_files]
    eval_files = [p for p, _ in manifest.eval_files]
    columns = list(SAMPLE_COLUMNS)
    batch_size, epochs = int(t["batch_size"]), int(t["epochs"])
    steps_per_epoch = max(1, math.ceil(manifest.train_rows / (size * batch_size)))
    stride = not petastorm_io.rows_sharded_by_reader(train_files, size)

    run_ctx = (tracking.run(cfg["experiment"], run_name=cfg["expid"], uri=cfg.get("tracking_uri"),
                            run_id=run_id, tags={"model": cfg["model"]["name"]})
               if rank == 0 else contextlib.nullcontext())
    metrics: dict[str, float] = {}
    with run_ctx as active_run_id:
        if rank == 0 and not resume:
            tracking.log_params({**cfg, "horovod": {"size": size},
                                 "data": {"samples_version": manifest.samples_version,
                                          "samples_path": manifest.samples_path,
                                          "train_rows": manifest.train_rows,
                                          "eval_rows": manifest.eval_rows,
                                          "train_files": len(train_files),
                                          "steps_per_epoch": steps_per_epoch}})
            tracking.set_tags({"samples_version": manifest.samples_version})
            if config_path:
                tracking.log_artifact(config_path, "config")
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "resolved_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
                tracking.log_artifact(Path(d) / "resolved_config.yaml", "config")
        for epoch in range(start_epoch, epochs):
            model.train()
            started = time.perf_counter()
            losses = []
            with petastorm_io.open_reader(train_files, columns, rank=rank, size=size, num_epochs=None,
                                          shuffle=True, seed=seed + epoch) as reader:
                batches = petastorm_io.iter_batches(reader, columns, batch_size, rank=rank, size=size,
                                                    stride_rows=stride,
                                                    shuffle_seed=seed * 100003 + epoch * 101 + rank)
                bar = tqdm(total=steps_per_epoch, desc=f"{cfg['expid']} epoch {epoch + 1}/{epochs}",
                           disable=rank != 0, file=sys.stderr, leave=False)
                for _ in range(steps_per_epoch):
                    batch = _to_tensors(next(batches))
                    out = model(batch)
                    loss = model.loss(out, batch["label"].float())
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    losses.append(loss.item())
                    bar.update(1)
                bar.close()
            elapsed = time.perf_counter() - started
            train_loss = hvd.allreduce_mean(float(np.mean(losses)), name=f"train_loss.{epoch}")
            pred = evaluate(model, eval_files, int(t.get("eval_batch_size", 1024)), rank, size)
            if rank == 0:
                metrics = {**eval_metrics(pred), "train_loss": train_loss,
                           "samples_per_sec": steps_per_epoch * batch_size * size / elapsed,
                           "lr": scheduler.get_last_lr()[0]}
                tracking.log_metrics(metrics, step=epoch + 1)
                # stdout, not logging: MLflow's database migrations (alembic fileConfig) disable the
                # loggers that exist when a store is first created.
                print(f"{cfg['expid']} epoch {epoch + 1}/{epochs}: "
                      + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)
                _save_checkpoint(ckpt_dir, {"epoch": epoch + 1, "model": model.state_dict(),
                                            "optimizer": optimizer.state_dict(),
                                            "scheduler": scheduler.state_dict(),
                                            "run_id": active_run_id})
            hvd.barrier()
            if int(t.get("fail_after_epoch") or 0) == epoch + 1:
                raise RuntimeError(f"fault injected after epoch {epoch + 1} (train.fail_after_epoch)")
        if rank == 0:
            if not metrics:  # resumed after the last epoch: evaluate the restored model once
                pred = evaluate(model, eval_files, int(t.get("eval_batch_size", 1024)), rank, size)
                metrics = eval_metrics(pred)
            import pandas as pd
            tracking.log_table(pd.DataFrame(pred), "eval_predictions.parquet")
            example = _input_example(eval_files)
            tracking.log_torch_model(model, example)
            weights = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()
            tracking.log_metrics({"final_weight_checksum": float(np.abs(weights).sum())})
        else:
            if not metrics and start_epoch >= epochs:
                evaluate(model, eval_files, int(t.get("eval_batch_size", 1024)), rank, size)
        _dump_weights(model, cfg, rank)
    return metrics


def _input_example(files: list[str], rows: int = 4) -> dict[str, np.ndarray]:
    from sim import petastorm_io
    columns = [c for c in SAMPLE_COLUMNS if c != "label"]
    with petastorm_io.open_reader(files[:1], columns) as reader:
        batch = next(petastorm_io.iter_batches(reader, columns, rows))
    return batch


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
