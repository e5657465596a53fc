"""Amazon reviews + item metadata (``--format amazon``; McAuley et al.), the SIM paper's Amazon (Books).

Reviews as JSON lines (``reviewerID``, ``asin``, ``unixReviewTime``, ``overall``) or a ratings CSV without
header (``user,item,rating,unix_ts``, the ``ratings_<Category>.csv`` files); metadata as JSON lines whose
file name starts with ``meta`` (``asin`` and ``categories`` = list of category paths, 2014, or
``category`` = one path, 2018; python-literal lines with single quotes are accepted). The category is the
last (most specific) element of the first path, as in the DIN/MIMN preprocessing of Amazon. Reviewer ids
and ASINs become ids by :func:`sim.inputs.canonical.stable_id`; a review without a rating is a ``pv``.

Review times are days (``unixReviewTime`` is midnight UTC of the review's date), so all of a user's
reviews of one day share one ts, and a target could see none of that day's earlier reviews (features use
ts < t). The import gives them distinct seconds of their day, in a fixed order
(:mod:`sim.inputs.importers.same_time`; ``--same-time keep`` turns it off); ``dt`` stays the review's day.
"""
from __future__ import annotations

import os

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sim.config import ConfigError
from sim.inputs.canonical import SEQUENCE_ID_MAX, stable_id
from sim.inputs.importers.common import (ImportInputs, _join_categories, _rating_type, _split, _union_lines,
                                         read_lines)
from sim.inputs.validation import MALFORMED, classify_behaviors, classify_items

_REVIEW_JSON = "reviewerID STRING, asin STRING, unixReviewTime STRING, overall STRING, _corrupt STRING"
_META_JSON = "asin STRING, categories ARRAY<ARRAY<STRING>>, category ARRAY<STRING>, _corrupt STRING"
_JSON_OPTS = {"columnNameOfCorruptRecord": "_corrupt", "allowSingleQuotes": "true", "mode": "PERMISSIVE"}


def _json(lines: DataFrame, schema: str) -> DataFrame:
    parsed = F.from_json(F.col("value"), schema, _JSON_OPTS)
    bad = (F.trim(F.col("value")) == "") | parsed.isNull() | parsed["_corrupt"].isNotNull()
    return lines.select(parsed.alias("j"), F.col("value").alias("raw"),
                        F.when(bad, F.lit(MALFORMED)).alias("pre_reason"))


def amazon_reviews_json_raw(lines: DataFrame) -> DataFrame:
    j = _json(lines, _REVIEW_JSON)
    return j.select(F.col("j.reviewerID").alias("user"), F.col("j.asin").alias("item"),
                    F.col("j.overall").alias("rating"), F.col("j.unixReviewTime").alias("ts"), "raw", "pre_reason")


def amazon_ratings_csv_raw(lines: DataFrame) -> DataFrame:
    return _split(lines, ("user", "item", "rating", "ts"), ",")


def amazon_meta_raw(lines: DataFrame) -> DataFrame:
    j = _json(lines, _META_JSON)
    path = F.coalesce(F.col("j.categories").getItem(0), F.col("j.category"))
    last = F.when(F.size(path) > 0, F.element_at(path, -1))
    return j.select(stable_id(F.col("j.asin"), SEQUENCE_ID_MAX).alias("item_id"), last.alias("category"), "raw", "pre_reason")


def import_amazon(spark: SparkSession, files: list[str], *, date_range, now_ts) -> ImportInputs:
    meta = [f for f in files if os.path.basename(f).lower().startswith("meta")]
    reviews = [f for f in files if f not in meta]
    if not meta or not reviews:
        raise ConfigError("amazon input needs review/rating files and a metadata file named meta*; "
                          f"got {[os.path.basename(f) for f in files]}")
    m_lines = [read_lines(spark, f, "amazon:meta") for f in meta]
    r_lines = [read_lines(spark, f, "amazon:reviews") for f in reviews]
    items_classified = classify_items(amazon_meta_raw(_union_lines(m_lines)), source="amazon:meta")
    parts = []
    for rl in r_lines:
        is_csv = rl.path.lower().endswith((".csv", ".csv.gz"))
        parts.append(amazon_ratings_csv_raw(rl.lines) if is_csv else amazon_reviews_json_raw(rl.lines))
    raw = parts[0]
    for p in parts[1:]:
        raw = raw.unionByName(p)
    # The rating is optional in Amazon files: missing -> a plain review (pv).
    raw = raw.withColumn("rating", F.coalesce(F.col("rating"), F.lit("0")))
    raw = raw.select(stable_id(F.col("user")).alias("user_id"), stable_id(F.col("item"), SEQUENCE_ID_MAX).alias("item_id"),
                     "rating", "ts", "raw", "pre_reason")
    ratings = _join_categories(_rating_type(raw), items_classified, F.col("item_id"))
    classified = classify_behaviors(ratings, source="amazon:reviews", date_range=date_range, now_ts=now_ts,
                                    id_columns=("user_id", "item_id"))
    return ImportInputs("amazon", "amazon:reviews", classified, r_lines, "amazon:meta", items_classified,
                        m_lines)
