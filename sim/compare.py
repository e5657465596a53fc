"""``python -m sim.compare``: the MLflow runs of an experiment as the paper's tables and figures
(:mod:`sim.reporting.compare`)."""
import sys

from sim.reporting.compare import main

if __name__ == "__main__":
    sys.exit(main())
