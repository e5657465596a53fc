"""Import a day of your own logs (behaviors and impressions in the canonical shape, under your column names).

The spark-submit entry point of :mod:`sim.inputs.cli_logs` (also the console script ``sim-import-logs``);
its options: ``python jobs/import_logs.py --help``. The ``sim`` package must be importable by the
driver's Python: ``make setup`` installs it into ``.venv``.
"""
from sim.inputs.cli_logs import run

if __name__ == "__main__":
    run()
