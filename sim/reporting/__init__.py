"""Reporting: the MLflow runs of an experiment as the paper's tables and figures (:mod:`.compare`).
``python -m sim.compare`` runs it."""
