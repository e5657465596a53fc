"""Generate the synthetic lifelong behavior and impression logs (sim.inputs.generator) into the lakehouse.

    python jobs/generate_logs.py --lakehouse DIR [--set generator.users=50 ...]
    spark-submit --packages io.delta:delta-spark_2.13:4.0.1 jobs/generate_logs.py --lakehouse DIR

Writes ``behaviors`` (all history days), ``impressions`` (the last ``generator.impression_days`` days,
with the true click probability ``p_click``) and ``rejects`` under the lakehouse, then prints one summary
line. Re-running with the same config is a no-op; another config replaces the same date range.
"""
from __future__ import annotations

from typing import Sequence

from sim.adapters.spark import spark_from_conf
from sim.cli import job_entry, job_parser, load_job_conf, report_or_fail
from sim.inputs.ingest import run_generator


def main(argv: Sequence[str] | None = None) -> int:
    parser = job_parser(__doc__.splitlines()[0])
    parser.add_argument("--now-ts", type=int, default=None,
                        help="epoch seconds treated as 'now' by validation (default: wall clock)")
    args = parser.parse_args(argv)
    cfg = load_job_conf(args)
    spark = spark_from_conf(cfg, job="generate_logs", master=args.master)
    return report_or_fail("generate_logs", lambda: run_generator(
        spark, cfg.generator, cfg.lakehouse, max_reject_ratio=cfg.validation.max_reject_ratio,
        now_ts=args.now_ts))


run = job_entry(main)  # the console script and the jobs/ entry point

if __name__ == "__main__":
    run()
