"""Behaviors of one user at one time, put in an order (:func:`order_same_time`): the history of a target
of the public-data protocol (:mod:`sim.inputs.importers.protocol`) is every behavior before it.

Features of an impression at t use only behaviors with ts < t (DESIGN.md, point-in-time correctness),
so behaviors of one user sharing a timestamp could never see one another: with Amazon's day-granular
review times a target would lose the whole day's earlier reviews, and MovieLens-100k rates in batches
(75,772 of its 100,000 ratings share their second with another rating of the same user). Giving each
behavior of such a group its own second, in a fixed order, makes a target's history hold every earlier
behavior of the group and never the target itself or a later one.

The order inside a group: the input files' order is not kept (validation finds duplicates by content,
Spark reads files in parallel) and in the public dumps it says nothing about time anyway (Amazon's are
sorted by item), so the group is ordered by a hash of (user, item, category, behavior type): fixed,
seed-independent, and unrelated to id order (an id order would make, say, high item ids the later
positives of a batch).

Times move forward only as far as needed: the i-th behavior of a user (time order) gets
``max(ts_i, ts_(i-1)' + 1)``, i.e. ``i + max_{j<=i}(ts_j - j)`` (one window, no loop), capped at the last
second of its day, so ``dt`` never changes (a day with more than 86,400 behaviors of one user at its end
would keep ties there). A user's behaviors at distinct seconds that are not crowded stay where they
are: Taobao's and MovieLens's second-granular times move only inside same-second groups and the seconds
right after them.
"""
from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

SAME_TIME = ("order", "keep")
SECONDS_PER_DAY = 86400


def order_same_time(behaviors: DataFrame) -> DataFrame:
    """``behaviors`` (accepted, canonical columns) with distinct, order-preserving times per user
    (module docstring); every other column as it was."""
    tie = F.xxhash64(F.lit("same-time"), F.col("user_id"), F.col("item_id"), F.col("category_id"),
                     F.col("behavior_type"))
    in_order = Window.partitionBy("user_id").orderBy("ts", tie, "item_id", "category_id", "behavior_type")
    i = F.row_number().over(in_order).cast("long")
    upto = in_order.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    moved = F.col("_i") + F.max(F.col("ts") - F.col("_i")).over(upto)
    day_end = F.floor(F.col("ts") / SECONDS_PER_DAY) * SECONDS_PER_DAY + (SECONDS_PER_DAY - 1)
    cols = [F.least(moved, day_end).cast("long").alias("ts") if c == "ts" else F.col(c) for c in behaviors.columns]
    return behaviors.withColumn("_i", i).select(*cols)
