"""Distributed training of SIM and the paper's baselines: Horovod ranks read their shard of the Delta
samples snapshot through Petastorm, train with Adam + exponential decay, evaluate AUC / logloss / gAUC over
the predictions of all ranks together, and rank 0 tracks everything in MLflow.

    horovodrun -np 2 python -m sim.train --config conf/experiments.yaml --expid sim_soft_time
    python -m sim.train --config conf/experiments.yaml --expid din --np 2   # validates, then horovodrun
    python -m sim.train --config conf/experiments.yaml --expid din          # one process
    python -m sim.train --config conf/experiments.yaml --expid din --np 2 --spark-master spark://host:7077
                                                        # the ranks as Spark tasks (horovod.spark.run)

Dates are split three ways: ``train_dates`` train, ``valid_dates`` pick the epoch (the one with the best
validation AUC; ``train.patience`` epochs without improvement end training early), and ``test_dates``
give the reported figures of that epoch's model, never used to choose anything. Per epoch the run logs
the validation metrics (``val_auc``, ``val_logloss``, ``val_gauc``), ``train_loss`` and, for search
models, the search diagnostics (:mod:`sim.training.diagnostics`); at the end the test metrics (``auc``,
``logloss``, ``gauc``) with ``best_epoch`` and the reference rows of :mod:`sim.training.evaluation` (oracles,
item popularity).

The data (files of the samples snapshot for the three date ranges, with row counts and the table
version) is resolved once, from the Delta log (no JVM), before training: by the ``--np`` launcher before
any worker starts, otherwise by rank 0, which broadcasts it. ``--resume`` trains on the samples version
the run started on, which its checkpoint directory records, even after the table has moved on
(:func:`sim.training.loop.resume_manifest`); a run on a newer version is a new run. Shards are balanced by rows
(:class:`sim.training.loader.ShardedLoader`): each epoch the row groups of the train files are laid end
to end in an order drawn from the seed and the epoch, and each rank takes the next rows // ranks rows
(one more for the first rows % ranks ranks), a row group on a border being read by both ranks, each
keeping its own rows (a table of fewer than ``train.shuffle_groups`` row groups per rank is dealt out
row by row instead). So every row is trained on exactly once per epoch, by one rank; a rank shuffles the
rows of ``train.shuffle_groups`` row groups together, so its batches mix dates and partitions. Every rank takes
the same number of steps per epoch, ceil(ceil(rows / ranks) / batch), its last batch or two smaller
(never empty, never repeating a row), so no rank waits in a collective for a batch that never comes.
Validation and test files are split the same way, unshuffled, and every row is scored once. A reader
loads only the columns the model reads.

Each rank trains on the CPU or, with ``train.device`` ``auto`` / ``cuda`` and a GPU, on the GPU of its
local rank (:mod:`sim.training.device`); ``cuda`` without one is refused before any worker starts.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence


from sim.adapters import tracking
from sim.config import ConfigError
from sim.adapters.delta_io import MissingTableError
from sim.config.experiment import check_model_builds
from sim.training.device import check_device
from sim.training.experiment import DataManifest, load_experiment
from sim.training.loop import data_for, train

log = logging.getLogger("sim.train")

SPLITS = ("train", "valid", "test")


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
    p.add_argument("--spark-master", default=None, metavar="URL",
                   help="with --np: run the ranks as Spark tasks of this cluster (Horovod's Spark runner) "
                        "instead of horovodrun, e.g. spark://host:7077")
    p.add_argument("--manifest", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


GLOO_TIMEOUT_SECONDS = 600


def launch(args: argparse.Namespace, cfg: dict) -> int:
    """Validate data before any worker starts, then run this module under horovodrun."""
    manifest = data_for(cfg, args.resume)
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


def _spark_rank(cfg: dict, manifest_json: str, resume: bool, config_name: str, config_text: str) -> dict:
    """One rank, in a Spark task: the same training as under horovodrun. The experiments file travels
    as text: an executor runs in its own directory, on a machine that may not have the driver's file."""
    from sim.cli import setup_logging
    setup_logging()
    with tempfile.TemporaryDirectory() as d:
        config_path = Path(d) / config_name
        config_path.write_text(config_text)
        return train(cfg, DataManifest.from_json(manifest_json), resume=resume, config_path=str(config_path))


def launch_on_spark(args: argparse.Namespace, cfg: dict) -> int:
    """Validate data, then run ``--np`` ranks as tasks of the Spark cluster at ``--spark-master``."""
    from sim.adapters import hvd
    manifest = data_for(cfg, args.resume)
    log.info("launching %d ranks on %s (Horovod's Spark runner)", args.np, args.spark_master)
    config = Path(args.config)
    results = hvd.run_on_spark(_spark_rank, (cfg, manifest.to_json(), args.resume, config.name, config.read_text()),
                               args.np, args.spark_master, app_name=f"sim-train-{cfg['expid']}")
    return 0 if results and results[0] else 1


def main(argv: Sequence[str] | None = None) -> int:
    from sim.cli import setup_logging
    setup_logging()
    args = parse_args(argv)
    try:
        cfg = load_experiment(args.config, args.expid, args.overrides)
        if "HOROVOD_RANK" not in os.environ:
            check_model_builds(cfg)  # before data is read or any worker starts
            tracking.check_reachable(cfg.get("tracking_uri"))
            # horovodrun -H localhost:N puts every rank on this host; Spark tasks spread over the workers.
            check_device(cfg["train"]["device"], processes_per_host=1 if args.spark_master else max(args.np, 1))
        if args.spark_master and not args.np:
            raise ConfigError("--spark-master needs --np N: the number of ranks (Spark tasks) to run")
        if args.np:
            return launch_on_spark(args, cfg) if args.spark_master else launch(args, cfg)
        manifest = DataManifest.from_json(Path(args.manifest).read_text()) if args.manifest else None
        if manifest is None and "HOROVOD_RANK" not in os.environ:
            manifest = data_for(cfg, args.resume)  # one process: fail on missing data before anything starts
        train(cfg, manifest, resume=args.resume, config_path=args.config)
    except (ConfigError, MissingTableError, tracking.TrackingUnreachable) as e:
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
