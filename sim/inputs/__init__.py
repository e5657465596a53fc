"""The input tables ``behaviors``, ``impressions`` and ``rejects``, in the order they are made:
their schemas (:mod:`.schema`), where rows come from (:mod:`.generator` synthetic logs, or
:mod:`.datasets` fetched and :mod:`.importers` parsed public data), the check of every row
(:mod:`.validation`), the canonical Delta tables (:mod:`.canonical`), the load step that ties them
together (:mod:`.ingest`), and the jobs' command lines (:mod:`.cli_generate`, :mod:`.cli_import`)."""
