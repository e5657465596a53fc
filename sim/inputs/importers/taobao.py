"""Taobao UserBehavior (``--format taobao``), the dataset of the SIM paper's section 5.1.

UserBehavior.csv: no header; ``user,item,category,behavior_type,unix_ts`` with behavior types
pv/buy/cart/fav, kept as they are, like the integer ids. Default date range 2017-11-25..2017-12-03 (the
dataset's documented span; rows outside are ``ts_outside_run_date``, as in the real file). Times are
epoch seconds; a user's behaviors within one second (a page view and a cart of one item, say) get
distinct seconds in a fixed order like every format's (:mod:`sim.inputs.importers.same_time`).
"""
from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from sim.inputs.importers.common import ImportInputs, _split, _union_lines, read_lines
from sim.inputs.validation import classify_behaviors

TAOBAO_DATE_RANGE = ("2017-11-25", "2017-12-03")


def taobao_raw(lines: DataFrame) -> DataFrame:
    return _split(lines, ("user_id", "item_id", "category_id", "behavior_type", "ts"), ",")


def import_taobao(spark: SparkSession, files: list[str], *, date_range, now_ts) -> ImportInputs:
    parts = [read_lines(spark, f, "taobao:behaviors") for f in files]
    raw = taobao_raw(_union_lines(parts))
    classified = classify_behaviors(raw, source="taobao:behaviors", date_range=date_range, now_ts=now_ts)
    return ImportInputs("taobao", "taobao:behaviors", classified, parts)
