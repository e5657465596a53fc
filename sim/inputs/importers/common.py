"""What the format importers share: the input files and their lines, splitting a line into string columns,
ratings as behavior types, the join with item metadata, and :class:`ImportInputs`, what every importer
returns.

A parsed line keeps its text as ``raw`` and carries ``pre_reason``, the reject reason known before
:mod:`sim.inputs.validation` classifies it (``malformed_line``, ``bad_rating``, ``unknown_item``; the first
one set wins).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from sim.inputs.canonical import SEQUENCE_ID_MAX, stable_id
from sim.config import ConfigError
from sim.inputs.validation import MALFORMED

LIKED_RATING = 4.0
_NUM_RE = r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)\s*$"


def list_inputs(inputs: str | Sequence[str]) -> list[str]:
    """Files named by ``inputs``: files, directories (their files, sorted), comma-separated lists."""
    items = inputs.split(",") if isinstance(inputs, str) else [p for i in inputs for p in i.split(",")]
    out = []
    for item in (i.strip() for i in items if i.strip()):
        if os.path.isdir(item):
            out += sorted(os.path.join(item, f) for f in os.listdir(item)
                          if os.path.isfile(os.path.join(item, f)) and not f.startswith((".", "_")))
        elif os.path.exists(item):
            out.append(item)
        else:
            raise ConfigError(f"input {item} does not exist")
    if not out:
        raise ConfigError(f"no input files in {inputs!r}")
    return out


@dataclass
class Lines:
    """The data lines of one input file (header removed) and its header, if it has one."""
    name: str
    path: str
    lines: DataFrame  # one column ``value``
    header: str | None = None


def read_lines(spark: SparkSession, path: str, name: str, has_header: bool = False) -> Lines:
    df = spark.read.text(path)
    header = None
    if has_header:
        first = df.limit(1).collect()
        header = first[0].value if first else None
        if header is not None:
            # Every line equal to the header is the header (a file concatenated from parts repeats it).
            df = df.where(F.col("value") != F.lit(header))
    return Lines(name, path, df, header)


def _split(lines: DataFrame, names: Sequence[str | None], sep: str) -> DataFrame:
    """Columns ``names`` from a ``sep``-separated line (None = ignored field); a line without exactly
    len(names) fields is ``malformed_line``."""
    parts = F.split(F.col("value"), re.escape(sep), -1)
    ok = F.size(parts) == len(names)
    cols = [F.when(ok, F.trim(parts.getItem(i))).alias(n) for i, n in enumerate(names) if n]
    return lines.select(*cols, F.col("value").alias("raw"),
                        F.when(~ok, F.lit(MALFORMED)).alias("pre_reason"))


def _merge_pre(df: DataFrame, reason: Column) -> DataFrame:
    """Set ``pre_reason`` to ``reason`` where it is not set yet."""
    return df.withColumn("pre_reason", F.coalesce(F.col("pre_reason"), reason))


def _rating_type(df: DataFrame, rating: str = "rating") -> DataFrame:
    """behavior_type from a rating: >= 4 -> fav, else pv; a non-numeric rating -> ``bad_rating``."""
    r = F.col(rating)
    numeric = r.rlike(_NUM_RE)
    df = df.withColumn("behavior_type", F.when(numeric & (r.cast("double") >= LIKED_RATING), F.lit("fav"))
                       .otherwise(F.lit("pv")))
    return _merge_pre(df, F.when(~numeric, F.lit("bad_rating")))


def _join_categories(ratings: DataFrame, items_classified: DataFrame, key: Column) -> DataFrame:
    """Attach category_id (hashed category name) from accepted items; no match -> ``unknown_item``."""
    items = items_classified.where(F.col("reason").isNull()).select(
        F.col("item_id").alias("_meta_item"), stable_id(F.col("category"), SEQUENCE_ID_MAX).alias("category_id"))
    joined = ratings.withColumn("_key", key).join(items, F.col("_key") == F.col("_meta_item"), "left")
    joined = _merge_pre(joined, F.when(F.col("_meta_item").isNull(), F.lit("unknown_item")))
    return joined.drop("_key", "_meta_item")



@dataclass
class ImportInputs:
    """Classified inputs of one import: behaviors and the item metadata they were joined with."""
    fmt: str
    behavior_source: str  # the ``source`` of their rejects
    behaviors: DataFrame  # classified (typed columns + reason, raw, source)
    behavior_lines: list[Lines]
    item_source: str | None = None
    items: DataFrame | None = None  # classified item metadata
    item_lines: list[Lines] = field(default_factory=list)


def _union_lines(parts: list[Lines]) -> DataFrame:
    out = parts[0].lines
    for p in parts[1:]:
        out = out.unionByName(p.lines)
    return out
