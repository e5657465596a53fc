"""MovieLens (``--format movielens``), the small dataset of our demo results.

One of the GroupLens layouts or RecBole atomic files, found by file name (:func:`movielens_layout`):

- ml-100k: ``u.data`` (tab: user, item, rating, ts) + ``u.item`` ('|', 5 fields then 19 genre flags:
  unknown, Action, Adventure, Animation, Children's, Comedy, Crime, Documentary, Drama, Fantasy,
  Film-Noir, Horror, Musical, Mystery, Romance, Sci-Fi, Thriller, War, Western);
- ml-latest / ml-25m / ml-20m: ``ratings.csv`` (header userId,movieId,rating,timestamp) + ``movies.csv``
  (header movieId,title,genres; titles may hold quoted commas);
- ml-1m / ml-10m: ``ratings.dat`` + ``movies.dat`` ('::' separated);
- RecBole: ``*.inter`` + ``*.item``, tab-separated with typed headers
  (``user_id:token  item_id:token  rating:float  timestamp:float`` and
  ``item_id:token  movie_title:token_seq  release_year:token  class:token_seq``).

The category is the movie's *first* genre (the first flag set; the first of ``a|b|c``; the first token of
RecBole's space-separated ``class``/``genre``). A rating becomes a ``fav`` or a ``pv`` behavior (see
:mod:`sim.inputs.importers`); user and item ids stay integers.

Times are epoch seconds, but ratings come in batches: in ML-100k, 75,772 of the 100,000 ratings share
their second with another rating of the same user (25,211 such seconds, up to 10 ratings each). The
import gives each its own second in a fixed order (:mod:`sim.inputs.importers.same_time`), so a target's
history holds the ratings of its batch before it.
"""
from __future__ import annotations

import os
from typing import Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from sim.config import ConfigError
from sim.inputs.importers.common import ImportInputs, _join_categories, _rating_type, _split, read_lines
from sim.inputs.validation import MALFORMED, classify_behaviors, classify_items

ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
                 "Sci-Fi", "Thriller", "War", "Western")
_INT_RE = r"^\s*[+-]?\d{1,18}\s*$"


def _numeric_key(col: str) -> Column:
    c = F.col(col)
    return F.when(c.rlike(_INT_RE), F.trim(c).cast("long"))


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
