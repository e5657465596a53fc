"""Public datasets as canonical behaviors and impressions, with the public-data protocol of SIM / MIMN.

The SIM paper evaluates on Taobao UserBehavior and Amazon (Books) reviews (section 5.1); MovieLens is the
small dataset our demo results use. Every format becomes the canonical tables of :mod:`sim.inputs.canonical`;
bad lines go to ``rejects`` (:mod:`sim.inputs.validation`), never crash the job.

Formats (``--format``, ``--input`` a file, a directory or a comma-separated list of files)
-------------------------------------------------------------------------------------------------
One module each, whose docstring gives the files it reads and their layouts:

``taobao``     UserBehavior.csv (:mod:`sim.inputs.importers.taobao`).
``movielens``  the GroupLens layouts (ml-100k, ml-latest / ml-25m / ml-20m, ml-1m / ml-10m) or RecBole
               atomic files, found by file name (:mod:`sim.inputs.importers.movielens`).
``amazon``     reviews or ratings + item metadata, McAuley et al. (:mod:`sim.inputs.importers.amazon`).

What they share (listing and reading the input files, splitting lines, ratings as behavior types, the join
with item metadata, :class:`ImportInputs`) is :mod:`sim.inputs.importers.common`.

Mapping onto the canonical schema
---------------------------------
- Integer ids are kept (MovieLens, Taobao); string ids (Amazon reviewer ids and ASINs) and category names
  (genres, Amazon categories) become positive ids by :func:`sim.inputs.canonical.stable_id` (xxhash64 of the
  string, so no driver-side dictionary; 0 is never produced, it means padding; items and categories in 31
  bits, as the samples store them).
- behavior_type: Taobao keeps its type. A rating or review becomes ``fav`` when the rating is >= 4 (an
  explicit "liked it") and ``pv`` otherwise; a rating that is not a number is rejected (``bad_rating``).
- A behavior whose item has no accepted metadata row is rejected (``unknown_item``).

Public-data protocol
--------------------
:func:`protocol_impressions` (:mod:`sim.inputs.importers.protocol`; DIN / DIEN / MIMN / SIM) turns the
accepted behaviors of any format into impressions: ``every`` (the papers) makes each behavior after a
user's first ``min_history`` a positive with ``negatives_per_positive`` items the user never touched as
negatives (``uniform`` or in proportion to ``popularity``); ``last`` (the job's default) only the user's
last ``targets_per_user`` behaviors. Before that, :func:`order_same_time`
(:mod:`sim.inputs.importers.same_time`) gives a user's behaviors that share a timestamp (Amazon's
day-granular times, MovieLens's rating batches) distinct seconds in a fixed order, so a target's history
holds every behavior before it.
"""
from __future__ import annotations

from typing import Sequence

from pyspark.sql import SparkSession

from sim.config import ConfigError
from sim.inputs.importers.amazon import (amazon_meta_raw, amazon_ratings_csv_raw, amazon_reviews_json_raw,
                                         import_amazon)
from sim.inputs.importers.common import LIKED_RATING, ImportInputs, Lines, list_inputs, read_lines
from sim.inputs.importers.movielens import (ML100K_GENRES, atomic_columns, import_movielens, ml100k_items_raw,
                                            movielens_layout, movies_csv_raw, movies_dat_raw)
from sim.inputs.importers.protocol import (NEGATIVE_SCHEMES, PROTOCOLS, Protocol, protocol_impressions,
                                          users_below)
from sim.inputs.importers.same_time import SAME_TIME, order_same_time
from sim.inputs.importers.taobao import TAOBAO_DATE_RANGE, import_taobao, taobao_raw

__all__ = ["FORMATS", "IMPORTERS", "ImportInputs", "LIKED_RATING", "Lines", "ML100K_GENRES", "NEGATIVE_SCHEMES",
           "PROTOCOLS", "Protocol", "SAME_TIME", "TAOBAO_DATE_RANGE", "amazon_meta_raw", "amazon_ratings_csv_raw",
           "amazon_reviews_json_raw", "atomic_columns", "import_amazon", "import_inputs", "import_movielens",
           "import_taobao", "list_inputs", "ml100k_items_raw", "movielens_layout", "movies_csv_raw",
           "movies_dat_raw", "order_same_time", "protocol_impressions", "read_lines", "taobao_raw",
           "users_below"]

FORMATS = ("taobao", "movielens", "amazon")
IMPORTERS = {"taobao": import_taobao, "movielens": import_movielens, "amazon": import_amazon}


def import_inputs(spark: SparkSession, fmt: str, inputs: str | Sequence[str], *, date_range=(None, None),
                  now_ts: int) -> ImportInputs:
    if fmt not in IMPORTERS:
        raise ConfigError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    return IMPORTERS[fmt](spark, list_inputs(inputs), date_range=date_range, now_ts=now_ts)
