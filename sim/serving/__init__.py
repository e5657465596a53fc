"""Online scoring from the User Behavior Tree: the paper's serving half (SIM section 5.2, "Online
Serving": the UBT as a key-key-value index user_id -> category_id -> behaviors that the CTR service
reads per request, plus the real-time behaviors of the day).

- :mod:`sim.serving.store`: the serving store: a UBT(D) snapshot keyed by (snapshot, user, category)
  -> the category's newest behaviors, and per user the short-term window inputs (the newest behaviors
  across categories), switched from the previous snapshot atomically; the same-day behaviors arrive
  through an append path. The default is embedded (one SQLite file in WAL mode, no server);
  :mod:`sim.serving.redis_store` keeps the same on a Redis or Valkey server (``--store redis://...``).
- :mod:`sim.serving.export`: the export job (Spark): UBT(D) from the lakehouse into the store.
- :mod:`sim.serving.rows`: a request (user, time t, candidates) -> exactly the samples rows the samples
  job builds for impressions at t (sim.samples), in numpy.
- :mod:`sim.serving.service`: the HTTP scoring service (FastAPI) around a run's logged model.
- :mod:`sim.serving.latency`: the service as a process and its latency over HTTP (bench, serve demo).

The package imports the pipeline's stages; none of them imports it.
"""
