"""Schemas of the canonical input tables: ``behaviors``, ``impressions`` and ``rejects``.

The samples table, the contract between the pipeline and training, has its own module:
:mod:`sim.samples.contract`.
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
