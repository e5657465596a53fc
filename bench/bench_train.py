"""Training throughput with 1 and 2 Horovod processes, and Petastorm reader throughput alone.

    python bench/bench_train.py [--lakehouse ./lakehouse] [--model sim_hard] [--epochs 3]

Reads the samples table of ``--lakehouse`` (``make demo`` leaves one; if there is none, the demo's Spark
stages build it first). Prints samples/s of training at -np 1 and -np 2 (as logged to MLflow by rank 0),
the reader's rows/s on one process, and the ratios: the reader must outrun what training consumes.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sim.adapters import delta_io, petastorm_io, tracking  # noqa: E402
from sim.config import load_pipeline_conf  # noqa: E402
from sim.demo import plan, split_sets  # noqa: E402
from sim.samples.contract import TRAINING_COLUMNS  # noqa: E402


def ensure_samples(lakehouse: str) -> dict:
    cfg = load_pipeline_conf(lakehouse=lakehouse)
    d = plan(cfg)
    if not (Path(delta_io.table_path(lakehouse, "samples")) / "_delta_log").is_dir():
        py = sys.executable
        for cmd in (["jobs/generate_logs.py"],
                    ["jobs/build_ubt.py", "--date", d["ubt_to"], "--backfill", d["ubt_from"]],
                    ["jobs/build_samples.py", "--date", d["samples_to"], "--backfill", d["samples_from"]]):
            subprocess.run([py, *cmd, "--lakehouse", lakehouse], cwd=ROOT, check=True)
    return d


def reader_rows_per_sec(files: list[str], batch_size: int, passes: int = 10) -> tuple[float, float]:
    """(steady-state rows/s over ``passes`` passes of one reader, seconds to open the reader).

    Training's samples/s is timed over the epoch's steps with its reader already open, so the reader is
    timed the same way: from its first batch, the open (Petastorm's metadata scan, worker pool) apart.
    """
    started = time.perf_counter()
    with petastorm_io.open_reader(files, list(TRAINING_COLUMNS), num_epochs=passes) as reader:
        batches = petastorm_io.iter_batches(reader, list(TRAINING_COLUMNS), batch_size)
        rows = len(next(batches)["label"])
        first = time.perf_counter()
        for b in batches:
            rows += len(b["label"])
        return rows / (time.perf_counter() - first), first - started


def train_samples_per_sec(np_: int, model: str, epochs: int, lakehouse: str, d: dict,
                          batch: int) -> tuple[float, str]:
    """(the best epoch's samples/s, the device the run resolved ``train.device=auto`` to)."""
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        cmd = [sys.executable, "-m", "sim.train", "--config", "conf/experiments.yaml", "--expid", model]
        for s in (f"lakehouse={lakehouse}", f"tracking_uri={uri}", f"train.epochs={epochs}",
                  f"train.batch_size={batch}", f"train.checkpoint_dir={tmp}/ckpt",
                  *split_sets(d)):
            cmd += ["--set", s]
        if np_ > 1:
            cmd += ["--np", str(np_)]
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_WAIT_POLICY="PASSIVE")
        subprocess.run(cmd, cwd=ROOT, check=True, env=env, stdout=subprocess.DEVNULL)
        runs = tracking.search_runs(["sim-synthetic"], uri=uri)
        hist = tracking.metric_history(runs.run_id.iloc[0], "samples_per_sec", uri=uri)
        return max(v for _, v in hist), runs["params.device.type"].iloc[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lakehouse", default=str(ROOT / "lakehouse"))
    p.add_argument("--model", default="sim_hard")
    p.add_argument("--epochs", type=int, default=3, help="the best epoch's samples/s is reported")
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args()
    lakehouse = str(Path(args.lakehouse).resolve())
    d = ensure_samples(lakehouse)
    files = [f.path for f in delta_io.log_snapshot(delta_io.table_path(lakehouse, "samples"))
             .between(d["train_from"], d["train_to"])]
    reader, reader_open = reader_rows_per_sec(files, args.batch_size)
    one, device = train_samples_per_sec(1, args.model, args.epochs, lakehouse, d, args.batch_size)
    two, _ = train_samples_per_sec(2, args.model, args.epochs, lakehouse, d, args.batch_size)
    print(f"model {args.model}, batch {args.batch_size}, {len(files)} files, machine cores {os.cpu_count()}, "
          f"training on {device} (train.device=auto)")
    print(f"{'what':<36}{'rows/s':>12}")
    print(f"{'petastorm reader alone (1 proc)':<36}{reader:>12.0f}   (opening it: {reader_open:.1f}s, not counted)")
    print(f"{'training, 1 process':<36}{one:>12.0f}")
    print(f"{'training, horovodrun -np 2 (total)':<36}{two:>12.0f}")
    print(f"ratio 2 processes / 1 process: {two / one:.2f}")
    print(f"ratio reader / training (1 process): {reader / one:.2f} (> 1: the reader is not the bottleneck)")


if __name__ == "__main__":
    main()
