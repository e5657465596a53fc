"""Training of SIM and the baselines under Horovod: the experiment and its data (:mod:`.experiment`),
which rows each rank reads (:mod:`.loader`), the loop (:mod:`.loop`), evaluation over all ranks
(:mod:`.evaluation`) with the paper's metrics (:mod:`.metrics`) and the search diagnostics
(:mod:`.diagnostics`). ``python -m sim.train`` runs it."""
