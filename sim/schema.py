"""Table schemas and column names shared by the Spark jobs, the loader and the models.

The contract between the pipeline and training is the `samples` table (DESIGN.md "Data model"):
one impression with its label and three behavior sequences, each padded with 0 to a fixed cap:

- short_*  the short-term window (DIN branch), newest first, cap ``short_cap``
- hard_*   hard-search GSU output: the candidate category's behaviors in the long window, cap ``hard_k``
- long_*   the newest ``long_cap`` behaviors of the long window across categories (soft search, avg pooling)

Each sequence has ``*_items`` (item ids), ``*_cats`` (category ids) and ``*_gaps`` (time-gap buckets of
impression time minus behavior time). Id 0 and bucket 0 mean padding. ``long_len`` is the uncapped
number of behaviors in the long window, ``d_category`` the days since the user's last behavior in the
candidate's category (-1 if none).
"""
from __future__ import annotations

from pyspark.sql import types as T

BEHAVIOR_TYPES = ("pv", "cart", "fav", "buy")

BEHAVIORS = T.StructType([
    T.StructField("user_id", T.LongType(), False),
    T.StructField("item_id", T.LongType(), False),
    T.StructField("category_id", T.LongType(), False),
    T.StructField("behavior_type", T.StringType(), False),
    T.StructField("ts", T.LongType(), False),  # epoch seconds, UTC
    T.StructField("dt", T.StringType(), False),  # yyyy-MM-dd of ts in UTC; partition column
])

IMPRESSIONS = T.StructType([
    T.StructField("impression_id", T.LongType(), False),
    T.StructField("user_id", T.LongType(), False),
    T.StructField("item_id", T.LongType(), False),
    T.StructField("category_id", T.LongType(), False),
    T.StructField("ts", T.LongType(), False),
    T.StructField("label", T.IntegerType(), False),
    # Ground-truth click probability where the data is synthetic (null for imported logs), and the same
    # click model without its long-term terms (the best a model that sees only the short window can do).
    T.StructField("p_click", T.DoubleType(), True),
    T.StructField("p_click_short", T.DoubleType(), True),
    T.StructField("dt", T.StringType(), False),
])

REJECTS = T.StructType([
    T.StructField("source", T.StringType(), False),
    T.StructField("reason", T.StringType(), False),
    T.StructField("raw", T.StringType(), True),
    T.StructField("dt", T.StringType(), False),  # the run's date
])

SEQUENCES = ("short", "hard", "long")
SEQ_FIELDS = ("items", "cats", "gaps")


def seq_columns(name: str) -> tuple[str, str, str]:
    """Column names (items, cats, gaps) of one sequence of the samples table."""
    return tuple(f"{name}_{f}" for f in SEQ_FIELDS)  # type: ignore[return-value]


SAMPLE_SCALARS = ("impression_id", "user_id", "item_id", "category_id", "ts", "label",
                  "long_len", "d_category")
SAMPLE_SEQUENCES = tuple(c for s in SEQUENCES for c in seq_columns(s))
# Columns training reads from the samples table.
SAMPLE_COLUMNS = SAMPLE_SCALARS + SAMPLE_SEQUENCES
# The generator's click probabilities (null for imported logs): read for evaluation only, never trained on.
ORACLE_COLUMNS = ("p_click", "p_click_short")
