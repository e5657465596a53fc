"""The User Behavior Tree (UBT): the paper's offline two-level index user_id -> category_id -> behaviors
(SIM section 5.2, "Online Serving"), kept as a Delta table that a nightly job updates.

The index row of a (user_id, category_id) holds the key's behaviors of the long window, newest first,
as an array of ``struct<ts, item_id, behavior_type>``, plus ``count`` (uncapped number of behaviors of
the key in the window), ``last_ts`` and ``oldest_ts``; the table stores it in segments (below). The
index holds the lifelong data: the paper's truncation to K = 200 applies to what hard search returns
(sim.samples), not to the index; an optional safety cap per key (``caps.ubt_category_cap``) exists and
is off by default.

Segments. The table is partitioned by ``segment``, the first date of the span of days a row's
behaviors fall in: a key's behaviors are stored as one row per segment, and the index row of a key is
the concatenation of its segment rows, newest segment first (:func:`ubt_view`). Segments are blocks of
``windows.segment_days`` days aligned on 1970-01-01, except the current block: its days are one
segment each until the block is complete. This is what keeps the nightly cost following the day's
data: a night appends the day's rows (one per key active that day) without reading the index, and
on the last day of a block it rolls that block's rows up into one row per key (at most
``segment_days`` days of data); no night reads or rewrites the 180-day arrays.

Retention. In time mode UBT(D) serves the impressions of day D+1, whose long window
(t - long_days, t) starts no earlier than midnight of D+1-long_days, so UBT(D) holds the behaviors of
the dates D+1-long_days .. D (``long_days`` whole days): blocks that end before that first date are
dropped (whole partitions, a metadata-only delete); the oldest block may still hold behaviors of
older dates, which every reader filters out by time (:func:`in_window_rows`). In count mode (public
datasets: the last N behaviors regardless of time) nothing expires; each segment row keeps its newest
max(long, short) count behaviors, which is all that the count-based sequences of sim.samples can
ever read.

Commits. Each date is one append commit with userMetadata {"job": "build_ubt", "date": D, ...}, then,
on the days that complete a block or drop one, a rollup and a delete commit tagged with the same date;
the samples job finds UBT(D-1) by time travel to the date's last commit
(sim.adapters.delta_io.version_for_date). A full build ("backfill") of date FROM aggregates all behaviors of
FROM's window in one pass. Every commit also records the settings the rows depend on and what the run
read (sim.adapters.lineage): a committed date is run again only with --force, and a re-run with other
settings or inputs is refused rather than skipped (sim.ubt.job).
"""
