"""SIM: Search-based User Interest Modeling (Pi et al., CIKM 2020) as a distributed batch pipeline.

The layout follows the flow; each stage is one sub-package:

- :mod:`sim.inputs`     the input tables (behaviors, impressions, rejects): generator, importers, validation
- :mod:`sim.ubt`        the User Behavior Tree, the paper's two-level index, built nightly (section 5.2)
- :mod:`sim.samples`    the point-in-time training samples and their contract with training
- :mod:`sim.models`     the torch models: SIM's search units and the baselines (sections 3-4, Table 2)
- :mod:`sim.training`   distributed training and evaluation (metrics, search diagnostics)
- :mod:`sim.reporting`  the paper's tables and figures from the MLflow runs
- :mod:`sim.adapters`   Spark, Delta, Petastorm, Horovod and MLflow, each behind one module
- :mod:`sim.local`      the local S3, Spark and MLflow servers and the demo flows run on them (at the top)

At the top: the commands a user runs (``python -m sim.train``, ``sim.compare``, ``sim.local.demo``), the
configuration (:mod:`sim.config`) and the jobs' command-line plumbing (:mod:`sim.cli`).
"""
__version__ = "0.1.0"
