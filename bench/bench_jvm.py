"""A job's driver JVM with and without the class-data archive of ``make setup``
(sim.adapters.jvm_archive): CPU seconds and wall time of one process that starts a SparkSession with
Delta, writes a small Delta table, reads it back and merges a row into it (what every job does before and
around its own work), alternating with and without the archive, ``--runs`` times each.

    PYTHONPATH=. .venv/bin/python bench/bench_jvm.py --runs 3

Both sides run with the same JVM options (``--java-options``, default the C1 JIT and the serial GC the
tests use; pass "" for the JVM's defaults). The last line is JSON: the medians and their ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import ROOT, Resources

from sim.adapters import jvm_archive

JOB = """
import shutil, sys
from sim.adapters.spark import get_spark
spark = get_spark("bench-jvm", conf={"spark.driver.extraJavaOptions": sys.argv[2]} if sys.argv[2] else {})
path = sys.argv[1]
spark.range(20000).selectExpr("id", "id % 7 AS k").write.format("delta").save(path)
assert spark.read.format("delta").load(path).groupBy("k").count().count() == 7
spark.sql(f"MERGE INTO delta.`{path}` t USING (SELECT 1 AS id, 2 AS k) s ON t.id = s.id "
          "WHEN MATCHED THEN UPDATE SET k = s.k")
spark.stop()
"""


def one(archive: bool, java_options: str) -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), SIM_JVM_ARCHIVE="1" if archive else "0")
    with tempfile.TemporaryDirectory() as work:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", JOB, f"{work}/t", java_options], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        with Resources(proc.pid, interval=0.2) as res:
            _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"the job failed:\n{err[-3000:]}")
        return res.cpu, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--java-options", default="-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
    p.add_argument("--quick", action="store_true", help="one run each")
    args = p.parse_args()
    if args.quick:
        args.runs = 1
    if not jvm_archive.archive_path().is_file():
        raise SystemExit(f"no archive at {jvm_archive.archive_path()}: run `make setup` (or "
                         "`python -m sim.local.jvm_archive build`) first")
    runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(args.runs):
        for archive in (False, True):
            runs[archive].append(one(archive, args.java_options))
            cpu, wall = runs[archive][-1]
            print(f"archive={'on ' if archive else 'off'} cpu {cpu:5.1f} s  wall {wall:5.1f} s", flush=True)
    med = {a: (statistics.median(c for c, _ in r), statistics.median(w for _, w in r)) for a, r in runs.items()}
    print(json.dumps({"bench": "bench_jvm", "runs": args.runs, "java_options": args.java_options, "load": round(os.getloadavg()[0], 1),
                      "cpu_s_off": round(med[False][0], 1), "cpu_s_on": round(med[True][0], 1),
                      "wall_s_off": round(med[False][1], 1), "wall_s_on": round(med[True][1], 1),
                      "cpu_ratio_on_off": round(med[True][0] / med[False][0], 3),
                      "wall_ratio_on_off": round(med[True][1] / med[False][1], 3)}))


if __name__ == "__main__":
    main()
