"""Public datasets as canonical behaviors and impressions, with the public-data protocol of SIM / MIMN.

The SIM paper evaluates on Taobao UserBehavior and Amazon (Books) reviews (section 5.1); MovieLens is the
small dataset our demo results use. Every format becomes the canonical tables of :mod:`sim.inputs.canonical`;
bad lines go to ``rejects`` (:mod:`sim.inputs.validation`), never crash the job.

Formats (``--format``, ``--input`` a file, a directory or a comma-separated list of files)
-------------------------------------------------------------------------------------------------
``taobao``     UserBehavior.csv: no header; ``user,item,category,behavior_type,unix_ts`` with behavior
               types pv/buy/cart/fav. Default date range 2017-11-25..2017-12-03 (the dataset's documented
               span; rows outside are ``ts_outside_run_date``, as in the real file).
``movielens``  one of the GroupLens layouts or RecBole atomic files, found by file name:
               - ml-100k: ``u.data`` (tab: user, item, rating, ts) + ``u.item`` ('|', 5 fields then 19
                 genre flags: unknown, Action, Adventure, Animation, Children's, Comedy, Crime,
                 Documentary, Drama, Fantasy, Film-Noir, Horror, Musical, Mystery, Romance, Sci-Fi,
                 Thriller, War, Western);
               - ml-latest / ml-25m / ml-20m: ``ratings.csv`` (header userId,movieId,rating,timestamp) +
                 ``movies.csv`` (header movieId,title,genres; titles may hold quoted commas);
               - ml-1m / ml-10m: ``ratings.dat`` + ``movies.dat`` ('::' separated);
               - RecBole: ``*.inter`` + ``*.item``, tab-separated with typed headers
                 (``user_id:token  item_id:token  rating:float  timestamp:float`` and
                 ``item_id:token  movie_title:token_seq  release_year:token  class:token_seq``).
               The category is the movie's *first* genre (the first flag set; the first of
               ``a|b|c``; the first token of RecBole's space-separated ``class``/``genre``).
``amazon``     reviews + item metadata (McAuley et al.): reviews as JSON lines (``reviewerID``, ``asin``,
               ``unixReviewTime``, ``overall``) or a ratings CSV without header (``user,item,rating,
               unix_ts``, the ``ratings_<Category>.csv`` files); metadata as JSON lines whose file name
               starts with ``meta`` (``asin`` and ``categories`` = list of category paths, 2014, or
               ``category`` = one path, 2018; python-literal lines with single quotes are accepted). The
               category is the last (most specific) element of the first path, as in the DIN/MIMN
               preprocessing of Amazon.

Mapping onto the canonical schema
---------------------------------
- Integer ids are kept (MovieLens, Taobao); string ids (Amazon reviewer ids and ASINs) and category names
  (genres, Amazon categories) become positive longs by :func:`sim.inputs.canonical.stable_id` (xxhash64 of the
  string, so no driver-side dictionary; 0 is never produced, it means padding).
- behavior_type: Taobao keeps its type. A rating or review becomes ``fav`` when the rating is >= 4 (an
  explicit "liked it") and ``pv`` otherwise; a rating that is not a number is rejected (``bad_rating``).
- A behavior whose item has no accepted metadata row is rejected (``unknown_item``).

Public-data protocol (:func:`next_behavior_impressions`; Pi et al. 2020 sec. 5.1, Pi et al. 2019 (MIMN))
--------------------------------------------------------------------------------------------------
Per user, accepted behaviors are ordered by (ts, item_id, category_id, behavior_type). The last
``targets_per_user`` behaviors (default 1, the papers' "predict the next behavior"), never the user's
first one, are *targets*. Each target yields two impressions at the target's ts:
- a positive (label 1): the target's item and category;
- a negative (label 0): an item drawn uniformly, seeded, from the dataset's item catalog (the distinct
  items of accepted behaviors, each with its smallest category id) among items the user never touched in
  any behavior. Up to ``max_negative_attempts`` hashed draws are tried; a target whose draws all hit
  touched items gets no negative (reported, so counts stay exact).
The behaviors table keeps every accepted behavior, targets included: downstream features of an
impression at t use only behaviors with ts < t, so a target (and anything at the same second) is never
its own history. ``impression_id`` is a positive xxhash64 of (user, ts, item, label, target rank).
``p_click`` is null (no ground truth for real data).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Sequence

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from sim.inputs.canonical import dt_of, stable_id
from sim.config import ConfigError
from sim.inputs.validation import MALFORMED, classify_behaviors, classify_items

log = logging.getLogger(__name__)

FORMATS = ("taobao", "movielens", "amazon")
TAOBAO_DATE_RANGE = ("2017-11-25", "2017-12-03")
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
                 "Sci-Fi", "Thriller", "War", "Western")
LIKED_RATING = 4.0
_INT_RE = r"^\s*[+-]?\d{1,18}\s*$"
_NUM_RE = r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)\s*$"
_MAX_LONG = 0x7FFFFFFFFFFFFFFF


# Reading -------------------------------------------------------------------------------------------
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
        F.col("item_id").alias("_meta_item"), stable_id(F.col("category")).alias("category_id"))
    joined = ratings.withColumn("_key", key).join(items, F.col("_key") == F.col("_meta_item"), "left")
    joined = _merge_pre(joined, F.when(F.col("_meta_item").isNull(), F.lit("unknown_item")))
    return joined.drop("_key", "_meta_item")


def _numeric_key(col: str) -> Column:
    c = F.col(col)
    return F.when(c.rlike(_INT_RE), F.trim(c).cast("long"))


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


# Taobao --------------------------------------------------------------------------------------------
def taobao_raw(lines: DataFrame) -> DataFrame:
    return _split(lines, ("user_id", "item_id", "category_id", "behavior_type", "ts"), ",")


def import_taobao(spark: SparkSession, files: list[str], *, date_range, now_ts) -> ImportInputs:
    parts = [read_lines(spark, f, "taobao:behaviors") for f in files]
    raw = taobao_raw(_union_lines(parts))
    classified = classify_behaviors(raw, source="taobao:behaviors", date_range=date_range, now_ts=now_ts)
    return ImportInputs("taobao", "taobao:behaviors", classified, parts)


# MovieLens -----------------------------------------------------------------------------------------
def _first_token(s: Column, sep_regex: str) -> Column:
    return F.trim(F.split(F.trim(s), sep_regex, -1).getItem(0))


def ml100k_items_raw(lines: DataFrame) -> DataFrame:
    parts = F.split(F.col("value"), r"\|", -1)
    ok = F.size(parts) == 5 + len(ML100K_GENRES)
    flags = F.slice(parts, 6, len(ML100K_GENRES))
    first = F.array_position(F.transform(flags, lambda f: F.trim(f)), "1")  # 1-based, 0 if none
    genres = F.array(*[F.lit(g) for g in ML100K_GENRES])
    category = F.when(first > 0, F.element_at(genres, first.cast("int"))).otherwise(F.lit("unknown"))
    return lines.select(F.when(ok, F.trim(parts.getItem(0))).alias("item_id"),
                        F.when(ok, category).alias("category"), F.col("value").alias("raw"),
                        F.when(~ok, F.lit(MALFORMED)).alias("pre_reason"))


def movies_csv_raw(lines: DataFrame) -> DataFrame:
    """movies.csv: ``movieId,title,genres`` with the title possibly quoted and holding commas."""
    pattern = r"^([^,]*),(.*),([^,]*)$"
    v = F.col("value")
    ok = v.rlike(pattern)
    return lines.select(F.when(ok, F.trim(F.regexp_extract(v, pattern, 1))).alias("item_id"),
                        F.when(ok, _first_token(F.regexp_extract(v, pattern, 3), r"\|")).alias("category"),
                        v.alias("raw"), F.when(~ok, F.lit(MALFORMED)).alias("pre_reason"))


def movies_dat_raw(lines: DataFrame) -> DataFrame:
    df = _split(lines, ("item_id", None, "category"), "::")
    return df.withColumn("category", _first_token(F.col("category"), r"\|"))


def atomic_columns(header: str | None, wanted: dict[str, Sequence[str]], path: str) -> dict[str, int]:
    """Positions of RecBole atomic-file fields (``name:type`` headers) by name; raises if missing."""
    if not header:
        raise ConfigError(f"{path}: empty file, expected a RecBole header such as 'user_id:token'")
    names = [h.split(":", 1)[0].strip() for h in header.split("\t")]
    out = {}
    for key, aliases in wanted.items():
        pos = next((names.index(a) for a in aliases if a in names), None)
        if pos is None:
            raise ConfigError(f"{path}: header {header!r} has none of {list(aliases)} for {key}")
        out[key] = pos
    out["_n"] = len(names)
    return out


def _atomic_split(lines: DataFrame, cols: dict[str, int]) -> DataFrame:
    names = [None] * cols["_n"]
    for k, i in cols.items():
        if k != "_n":
            names[i] = k
    return _split(lines, names, "\t")


def movielens_layout(files: list[str]) -> tuple[str, str, str]:
    """(layout, ratings file, items file) from file names."""
    by_name = {os.path.basename(f): f for f in files}
    if "u.data" in by_name and "u.item" in by_name:
        return "ml-100k", by_name["u.data"], by_name["u.item"]
    if "ratings.csv" in by_name and "movies.csv" in by_name:
        return "ml-latest", by_name["ratings.csv"], by_name["movies.csv"]
    if "ratings.dat" in by_name and "movies.dat" in by_name:
        return "ml-1m", by_name["ratings.dat"], by_name["movies.dat"]
    inter = [f for f in files if f.endswith(".inter")]
    item = [f for f in files if f.endswith(".item")]
    if len(inter) == 1 and len(item) == 1:
        return "recbole", inter[0], item[0]
    raise ConfigError("movielens input needs u.data + u.item, ratings.csv + movies.csv, ratings.dat + "
                      f"movies.dat or one *.inter + one *.item; got {sorted(by_name)}")


def import_movielens(spark: SparkSession, files: list[str], *, date_range, now_ts) -> ImportInputs:
    layout, ratings_path, items_path = movielens_layout(files)
    has_header = layout in ("ml-latest", "recbole")
    r_lines = read_lines(spark, ratings_path, "movielens:ratings", has_header)
    i_lines = read_lines(spark, items_path, "movielens:items", has_header)
    rating_cols = ("user_id", "item_id", "rating", "ts")
    if layout == "ml-100k":
        ratings, items = _split(r_lines.lines, rating_cols, "\t"), ml100k_items_raw(i_lines.lines)
    elif layout == "ml-latest":
        ratings, items = _split(r_lines.lines, rating_cols, ","), movies_csv_raw(i_lines.lines)
    elif layout == "ml-1m":
        ratings, items = _split(r_lines.lines, rating_cols, "::"), movies_dat_raw(i_lines.lines)
    else:
        rc = atomic_columns(r_lines.header, {"user_id": ["user_id"], "item_id": ["item_id"],
                                             "rating": ["rating"], "ts": ["timestamp"]}, ratings_path)
        ic = atomic_columns(i_lines.header, {"item_id": ["item_id"],
                                             "category": ["class", "genre", "genres", "categories"]},
                            items_path)
        ratings = _atomic_split(r_lines.lines, rc)
        items = _atomic_split(i_lines.lines, ic).withColumn("category", _first_token(F.col("category"), r"\s+"))
    items_classified = classify_items(items, source="movielens:items")
    ratings = _join_categories(_rating_type(ratings), items_classified, _numeric_key("item_id"))
    classified = classify_behaviors(ratings, source="movielens:ratings", date_range=date_range, now_ts=now_ts,
                                    id_columns=("user_id", "item_id"))
    return ImportInputs("movielens", "movielens:ratings", classified, [r_lines], "movielens:items",
                        items_classified, [i_lines])


# Amazon --------------------------------------------------------------------------------------------
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
    return j.select(stable_id(F.col("j.asin")).alias("item_id"), last.alias("category"), "raw", "pre_reason")


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
    raw = raw.select(stable_id(F.col("user")).alias("user_id"), stable_id(F.col("item")).alias("item_id"),
                     "rating", "ts", "raw", "pre_reason")
    ratings = _join_categories(_rating_type(raw), items_classified, F.col("item_id"))
    classified = classify_behaviors(ratings, source="amazon:reviews", date_range=date_range, now_ts=now_ts,
                                    id_columns=("user_id", "item_id"))
    return ImportInputs("amazon", "amazon:reviews", classified, r_lines, "amazon:meta", items_classified,
                        m_lines)


IMPORTERS = {"taobao": import_taobao, "movielens": import_movielens, "amazon": import_amazon}


def import_inputs(spark: SparkSession, fmt: str, inputs: str | Sequence[str], *, date_range=(None, None),
                  now_ts: int) -> ImportInputs:
    if fmt not in IMPORTERS:
        raise ConfigError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    return IMPORTERS[fmt](spark, list_inputs(inputs), date_range=date_range, now_ts=now_ts)


# Protocol ------------------------------------------------------------------------------------------
def _positive_hash(*cols: Column) -> Column:
    h = F.xxhash64(*cols).bitwiseAND(F.lit(_MAX_LONG))
    return F.when(h == 0, F.lit(1).cast("long")).otherwise(h)


def next_behavior_impressions(behaviors: DataFrame, *, seed: int, targets_per_user: int = 1,
                              max_negative_attempts: int = 20, broadcast_limit: int = 2_000_000) -> DataFrame:
    """Impressions of the public-data protocol (module docstring) from accepted behaviors.

    Args:
        behaviors: accepted canonical behaviors.
        seed: negative sampling seed.
        targets_per_user: last behaviors per user that become positives.
        max_negative_attempts: hashed draws per target to find an untouched item.
        broadcast_limit: candidate (user, item) pairs up to which they are broadcast to find the touched
            ones in one unshuffled pass over the behaviors.
    Returns:
        impressions (impression_id, user_id, item_id, category_id, ts, label, p_click=null, dt) plus
        ``target_rank`` (1 = the user's last behavior).
    """
    order = [F.col("ts").desc(), F.col("item_id").desc(), F.col("category_id").desc(),
             F.col("behavior_type").desc()]
    # row_number <= k + 1 lets Spark keep a per-partition top-(k+1) before the shuffle (WindowGroupLimit);
    # rank r is a target when the user has a behavior before it, i.e. more than r rows survive.
    top = behaviors.select("user_id", "item_id", "category_id", "ts",
                           F.row_number().over(Window.partitionBy("user_id").orderBy(*order)).alias("target_rank"))
    top = top.where(F.col("target_rank") <= targets_per_user + 1)
    top = top.withColumn("n_top", F.count(F.lit(1)).over(Window.partitionBy("user_id")))
    targets = (top.where((F.col("target_rank") <= targets_per_user) & (F.col("target_rank") < F.col("n_top")))
               .select("user_id", "item_id", "category_id", "ts", "target_rank"))

    catalog = behaviors.groupBy("item_id").agg(F.min("category_id").alias("category_id"))
    # A dense index over the catalog, in item-id order, so a uniform draw is one equi-join.
    catalog = catalog.select("item_id", "category_id",
                             (F.row_number().over(Window.orderBy("item_id")) - 1).alias("idx"))
    n_items = catalog.agg(F.count(F.lit(1))).first()[0]
    attempts = targets.select("user_id", "ts", "target_rank",
                              F.explode(F.sequence(F.lit(0), F.lit(max_negative_attempts - 1))).alias("attempt"))
    v = F.shiftrightunsigned(F.xxhash64(F.lit(int(seed)), F.lit("negative"), F.col("user_id"), F.col("ts"),
                                        F.col("target_rank").cast("long"), F.col("attempt").cast("long")), 11)
    attempts = attempts.withColumn("idx", F.least(F.floor(v.cast("double") / float(1 << 53) * n_items),
                                                  F.lit(max(n_items - 1, 0))).cast("long"))
    cand = attempts.join(catalog, "idx")
    pairs = cand.select("user_id", "item_id").distinct()
    if targets.count() * max_negative_attempts <= broadcast_limit:
        pairs = F.broadcast(pairs)
    touched = behaviors.select("user_id", "item_id").join(pairs, ["user_id", "item_id"], "left_semi").distinct()
    cand = cand.join(touched, ["user_id", "item_id"], "left_anti")
    first = Window.partitionBy("user_id", "ts", "target_rank").orderBy("attempt")
    negatives = (cand.withColumn("_k", F.row_number().over(first)).where(F.col("_k") == 1)
                 .select("user_id", "item_id", "category_id", "ts", "target_rank", F.lit(0).alias("label")))
    positives = targets.withColumn("label", F.lit(1))
    imps = positives.unionByName(negatives)
    impression_id = _positive_hash(F.lit("impression"), F.col("user_id"), F.col("ts"), F.col("item_id"),
                                   F.col("label").cast("long"), F.col("target_rank").cast("long"))
    return imps.select(impression_id.alias("impression_id"), "user_id", "item_id", "category_id", "ts",
                       F.col("label").cast("int").alias("label"), F.lit(None).cast("double").alias("p_click"),
                       dt_of(F.col("ts")).alias("dt"), "target_rank")
