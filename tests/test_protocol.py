"""The public-data protocol on small inline behaviors (sim.inputs.importers.protocol, .same_time): targets
per user, negatives per positive, never-touched negatives, popularity-proportional draws, same-time
ordering and what the samples transforms then see as a target's history."""
from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest
from pyspark.sql import functions as F
from scipy import stats

from sim.config import ConfigError
from sim.inputs.canonical import day_start_ts, to_behaviors
from sim.inputs.importers import Protocol, order_same_time, protocol_impressions, users_below

DAY = day_start_ts("2014-05-13")


def _behaviors(spark, rows):
    """Canonical behaviors from (user, item, category, ts) tuples (behavior type pv)."""
    df = spark.createDataFrame([(u, i, c, "pv", ts) for u, i, c, ts in rows],
                               "user_id long, item_id long, category_id long, behavior_type string, ts long")
    return to_behaviors(df)


def _in_order(rows):
    """Per user, the (item, ts) of the behaviors in time order (ties as the protocol orders them)."""
    out = defaultdict(list)
    for r in sorted(rows, key=lambda r: (r[3], r[1], r[2])):
        out[r[0]].append((r[1], r[3]))
    return out


# A catalog of 12 items; user 1 has 6 behaviors, user 2 has 3, user 3 one, user 4 touches 10 of the 12.
ROWS = ([(1, i, 100 + i % 3, DAY + 60 * i) for i in range(1, 7)]
        + [(2, i, 100 + i % 3, DAY + 86400 + 10 * i) for i in (3, 7, 8)]
        + [(3, 9, 100, DAY + 5)]
        + [(4, i, 100 + i % 3, DAY + 7 * i) for i in range(1, 11)] + [(5, 11, 101, DAY), (5, 12, 102, DAY + 1)])


def test_every_behavior_after_min_history_is_a_target_with_k_untouched_negatives(spark):
    beh = _behaviors(spark, ROWS)
    p = Protocol(mode="every", min_history=2, negatives_per_positive=2)
    imps = protocol_impressions(beh, p, seed=3).collect()
    touched = {(r[0], r[1]) for r in ROWS}
    seq = _in_order(ROWS)
    pos = [r for r in imps if r.label == 1]
    neg = [r for r in imps if r.label == 0]
    # Targets: each user's behaviors after the first two, at their own times.
    expected = sorted((u, item, ts) for u, s in seq.items() for item, ts in s[2:])
    assert sorted((r.user_id, r.item_id, r.ts) for r in pos) == expected
    assert len(pos) == 4 + 1 + 0 + 8 + 0
    by_target = defaultdict(list)
    for r in neg:
        by_target[(r.user_id, r.ts, r.target_rank)].append(r.item_id)
        assert (r.user_id, r.item_id) not in touched  # never touched: neither before the target nor after
    assert set(by_target) <= {(r.user_id, r.ts, r.target_rank) for r in pos}
    for (user, _, _), items in by_target.items():
        assert len(set(items)) == len(items)  # distinct negatives of one target
        # Users 1, 2 have >= 6 untouched items of 12: two negatives each in 21 draws. User 4 has only
        # items 11 and 12 left, which 21 uniform draws over 12 items may not both reach.
        assert len(items) == 2 if user != 4 else set(items) <= {11, 12}, (user, items)
    assert len(by_target) == len(pos)
    assert len({r.impression_id for r in imps}) == len(imps)
    assert all(r.dt == ("2014-05-13" if r.ts < DAY + 86400 else "2014-05-14") for r in imps)


def test_targets_short_of_untouched_items_get_fewer_negatives(spark):
    beh = _behaviors(spark, ROWS)
    imps = protocol_impressions(beh, Protocol(mode="every", min_history=1, negatives_per_positive=3),
                                seed=3).collect()
    per_target = Counter((r.user_id, r.target_rank) for r in imps if r.label == 0)
    assert max(n for (u, _), n in per_target.items() if u == 4) == 2  # only items 11, 12 are untouched
    assert {n for (u, _), n in per_target.items() if u != 4} == {3}
    assert {r.item_id for r in imps if r.label == 0 and r.user_id == 4} == {11, 12}


def test_min_user_behaviors_drops_users_as_targets(spark):
    beh = _behaviors(spark, ROWS)
    for mode in ("every", "last"):
        imps = protocol_impressions(beh, Protocol(mode=mode, min_user_behaviors=6, targets_per_user=2),
                                    seed=3).collect()
        assert {r.user_id for r in imps} == {1, 4}, mode
    assert users_below(beh, 6) == 3  # users 2, 3, 5


def test_last_mode_rows_are_the_every_mode_rows_of_the_last_targets(spark):
    """Both modes give one target the same impressions (ids, negatives): ``last`` is the tail of ``every``."""
    beh = _behaviors(spark, ROWS)
    cols = ["impression_id", "user_id", "item_id", "category_id", "ts", "label", "dt", "target_rank"]
    last = protocol_impressions(beh, Protocol(mode="last", targets_per_user=3), seed=11).select(cols)
    every = protocol_impressions(beh, Protocol(mode="every"), seed=11).select(cols)
    assert sorted(last.collect()) == sorted(every.where("target_rank <= 3").collect())
    # The first behavior of a user is never a target; user 3 has only that one.
    assert sorted(r.user_id for r in last.where("label = 1").collect()) == [1] * 3 + [2] * 2 + [4] * 3 + [5]


def test_protocol_settings_are_checked():
    with pytest.raises(ConfigError, match="protocol 'all'"):
        Protocol(mode="all")
    with pytest.raises(ConfigError, match="negatives_per_positive=0 must be >= 1"):
        Protocol(negatives_per_positive=0)
    with pytest.raises(ConfigError, match="negatives 'hard'"):
        Protocol(negatives="hard")
    assert "targets_per_user" not in Protocol(mode="every").settings()


def _skewed_log(n_items=20, per_weight=24, seed=0):
    """Item i occurs per_weight * i times; the occurrences are shuffled into users of two behaviors."""
    occ = [i for i in range(1, n_items + 1) for _ in range(per_weight * i)]
    random.Random(seed).shuffle(occ)
    return [(u // 2 + 1, item, 7, DAY + 3600 * (u % 2)) for u, item in enumerate(occ)]


def _chi2_p(observed: Counter, expected: dict) -> float:
    keys = sorted(expected)
    obs = [observed.get(k, 0) for k in keys]
    exp = [expected[k] for k in keys]
    scale = sum(obs) / sum(exp)
    return float(stats.chisquare(obs, [e * scale for e in exp]).pvalue)


def test_popularity_negatives_follow_popularity_and_uniform_ones_do_not(spark):
    rows = _skewed_log()
    beh = _behaviors(spark, rows)
    occurrences = Counter(r[1] for r in rows)
    touched = defaultdict(set)
    for u, i, _, _ in rows:
        touched[u].add(i)
    # Expected draws: per target, the scheme's weights over the items the user never touched.
    expected = {"popularity": defaultdict(float), "uniform": defaultdict(float)}
    for u, items in touched.items():
        free = [i for i in occurrences if i not in items]
        for scheme, w in (("popularity", occurrences), ("uniform", Counter({i: 1 for i in occurrences}))):
            total = sum(w[i] for i in free)
            for i in free:
                expected[scheme][i] += w[i] / total
    drawn = {}
    for scheme in ("popularity", "uniform"):
        negs = protocol_impressions(beh, Protocol(mode="every", negatives=scheme), seed=5).where("label = 0")
        drawn[scheme] = Counter({r.item_id: r["count"] for r in negs.groupBy("item_id").count().collect()})
        assert sum(drawn[scheme].values()) == len(touched)  # one negative per target (each user's second)
    pop, uni = drawn["popularity"], drawn["uniform"]
    # Each scheme fits its own expectation (chi-square, 19 df) and is far from the other's.
    assert _chi2_p(pop, expected["popularity"]) > 0.01
    assert _chi2_p(uni, expected["uniform"]) > 0.01
    assert _chi2_p(pop, expected["uniform"]) < 1e-6
    assert _chi2_p(uni, expected["popularity"]) < 1e-6
    items = sorted(occurrences)
    assert stats.spearmanr([occurrences[i] for i in items], [pop[i] for i in items]).statistic > 0.9
    assert stats.spearmanr([occurrences[i] for i in items], [uni[i] for i in items]).statistic < 0.3


# Same-time ordering ----------------------------------------------------------------------------------
def test_same_time_behaviors_get_distinct_ordered_seconds_within_their_day(spark):
    end = DAY + 86399
    rows = ([(1, i, 5, DAY) for i in (30, 10, 20)]  # one day, one timestamp (Amazon)
            + [(1, 40, 5, DAY + 1), (1, 50, 5, DAY + 100)]  # right after: pushed on; later: untouched
            + [(2, i, 5, end) for i in (1, 2)]  # at the day's last second: stays in its day (a tie)
            + [(2, 3, 5, end + 1)])
    out = {(r.user_id, r.item_id): r for r in order_same_time(_behaviors(spark, rows)).collect()}
    u1 = sorted((out[(1, i)].ts, i) for i in (10, 20, 30, 40, 50))
    assert [ts for ts, _ in u1] == [DAY, DAY + 1, DAY + 2, DAY + 3, DAY + 100]
    assert u1[3][1] == 40 and u1[4][1] == 50  # behaviors keep their order across the groups
    # The next day's first behavior follows the capped one's place (end + 1) and stays in its own day.
    assert {out[(2, 1)].ts, out[(2, 2)].ts} == {end} and out[(2, 3)].ts == end + 2
    assert all(r.dt == ("2014-05-13" if r.ts <= end else "2014-05-14") for r in out.values())
    # The order inside a group is fixed: the same input gives the same seconds.
    again = {(r.user_id, r.item_id): r.ts for r in order_same_time(_behaviors(spark, rows)).collect()}
    assert again == {k: r.ts for k, r in out.items()}


@pytest.mark.parametrize("same_time", ["order", "keep"])
def test_a_targets_count_mode_history_is_every_earlier_behavior_never_itself_or_later(spark, same_time):
    """Day-granular times (five reviews on one day, two on the next): after ordering, the count-mode
    sequences of the samples transforms hold exactly the behaviors before each target; without it the
    same day's earlier reviews are lost."""
    from sim.samples.contract import SampleSpec
    from sim.samples.transforms import build_sequences, split_impressions
    from sim.ubt.settings import UBT, Caps, Windows

    rows = [(1, i, 100 + i % 2, DAY) for i in (11, 12, 13, 14, 15)] + [(1, i, 101, DAY + 86400) for i in (16, 17)]
    beh = _behaviors(spark, rows)
    if same_time == "order":
        beh = order_same_time(beh)
    imps = protocol_impressions(beh, Protocol(mode="every"), seed=1)
    valid, _ = split_impressions(imps, "2014-05-14")
    spec = SampleSpec(Windows(mode="count", long_count=20, short_count=2), Caps(short_cap=2, hard_k=20, long_cap=20))
    seqs = build_sequences(valid, spark.createDataFrame([], UBT), beh, None, spec).where("label = 1").collect()
    times = {r.item_id: r.ts for r in beh.collect()}
    assert len(seqs) == 6
    for s in seqs:
        before = sorted((i for i in times if times[i] < s.ts), key=lambda i: (-times[i], -i))
        assert list(s.all_items) == before  # newest first: every earlier behavior, nothing at or after t
        assert s.item_id not in s.all_items and all(t < s.ts for t in s.all_ts)
        assert s.long_len == len(before)
        if same_time == "order":
            rank = sorted(times, key=times.get).index(s.item_id)
            assert len(before) == rank  # the target's position: all earlier behaviors of its day too
            assert s.n_short == min(2, rank) and s.n_long == rank - s.n_short
    lens = sorted(s.long_len for s in seqs)
    assert lens == ([1, 2, 3, 4, 5, 6] if same_time == "order" else [0, 0, 0, 0, 5, 5])
