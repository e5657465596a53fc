"""Export UBT(D) into the serving store and switch to it: the spark-submit entry point of
:mod:`sim.serving.cli`; its options: ``python jobs/export_ubt.py --help``."""
from sim.serving.cli import run

if __name__ == "__main__":
    run()
