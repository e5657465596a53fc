"""Import a public dataset (Taobao, MovieLens, Amazon) as canonical behaviors and impressions.

The spark-submit entry point of :mod:`sim.inputs.cli_import` (also the console script
``sim-import-dataset``); its options: ``python jobs/import_dataset.py --help``. The ``sim`` package must
be importable by the driver's Python: ``make setup`` installs it into ``.venv``.
"""
from sim.inputs.cli_import import run

if __name__ == "__main__":
    run()
