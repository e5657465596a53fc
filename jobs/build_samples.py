"""Samples job: impressions of day D with their point-in-time sequences from UBT(D-1) and day-D

The spark-submit entry point of :mod:`sim.samples.cli` (also the console script ``sim-build-samples``);
its options: ``python jobs/build_samples.py --help``. The ``sim`` package must be importable by the
driver's Python: ``make setup`` installs it into ``.venv``.
"""
from sim.samples.cli import run

if __name__ == "__main__":
    run()
