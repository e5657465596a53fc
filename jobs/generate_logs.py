"""Generate the synthetic lifelong behavior and impression logs (sim.inputs.generator) into the lakehouse.

The spark-submit entry point of :mod:`sim.inputs.cli_generate` (also the console script
``sim-generate-logs``); its options: ``python jobs/generate_logs.py --help``. The ``sim`` package must be
importable by the driver's Python: ``make setup`` installs it into ``.venv``.
"""
from sim.inputs.cli_generate import run

if __name__ == "__main__":
    run()
