"""One nightly command for date D: the import of D (when configured), UBT(D), samples(D), the export of
UBT(D) into the serving store (when configured).

The spark-submit entry point of :mod:`sim.nightly` (also the console script ``sim-nightly``); its
options: ``python jobs/nightly.py --help``. The ``sim`` package must be importable by the driver's
Python: ``make setup`` installs it into ``.venv``.
"""
from sim.nightly import run

if __name__ == "__main__":
    run()
