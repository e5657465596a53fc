"""Nightly User Behavior Tree job: UBT(D) = UBT(D-1) + behaviors of D - behaviors leaving the window.

The spark-submit entry point of :mod:`sim.ubt.cli` (also the console script ``sim-build-ubt``); its
options: ``python jobs/build_ubt.py --help``. The ``sim`` package must be importable by the driver's
Python: ``make setup`` installs it into ``.venv``.
"""
from sim.ubt.cli import run

if __name__ == "__main__":
    run()
