"""The input tables ``behaviors``, ``impressions`` and ``rejects``, in the order they are made:
their schemas (:mod:`.schema`), where rows come from (:mod:`.generator` synthetic logs, or
:mod:`.datasets` fetched and :mod:`.importers` parsed public data), the check of every row
(:mod:`.validation`), the canonical Delta tables (:mod:`.canonical`), the load step that ties them
together (:mod:`.ingest`), a team's own logs by the day (:mod:`.own_logs`), and the jobs' command lines
(:mod:`.cli_generate`, :mod:`.cli_import`, :mod:`.cli_logs`)."""

# The jobs that write the input tables, as their commits record them (``job`` in the userMetadata):
# what names a lakehouse's data (sim.training.comparability).
GENERATOR_JOB = "generate_logs"
IMPORT_JOB_PREFIX = "import_dataset."  # followed by the importer's format
LOGS_JOB = "import_logs"  # a team's own logs, one date a run (sim.inputs.own_logs)
