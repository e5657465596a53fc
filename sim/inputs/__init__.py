"""The input tables ``behaviors``, ``impressions`` and ``rejects``, in the order they are made:
their schemas (:mod:`.schema`), where rows come from (:mod:`.generator` synthetic logs, or
:mod:`.datasets` fetched and :mod:`.importers` parsed public data), the check of every row
(:mod:`.validation`), the canonical Delta tables (:mod:`.canonical`), the load step that ties them
together (:mod:`.ingest`), and the jobs' command lines (:mod:`.cli_generate`, :mod:`.cli_import`)."""

# The jobs that write the input tables, as their commits record them (``job`` in the userMetadata):
# what names a lakehouse's data (sim.training.comparability).
GENERATOR_JOB = "generate_logs"
IMPORT_JOB_PREFIX = "import_dataset."  # followed by the importer's format
