"""Pipeline overrides for tiny demo logs (a few users, 500 items in 10 categories, 8- and 3-day windows,
caps 20 / 10 / 5): what the object-storage and cluster tests run their jobs on."""
from __future__ import annotations

# Spark settings for tiny data, in the tests' session and in the jobs they run: on a few thousand rows,
# compiling queries costs more CPU than it saves. Interpreted expressions (``factoryMode`` is Spark's own
# switch for its tests), no whole-stage code generation, no adaptive re-planning, one partition for Delta's
# log replay, two tasks (not 10,000) for a file listing such as VACUUM's. None of them changes a result.
TINY_SPARK = {"spark.sql.codegen.wholeStage": "false", "spark.sql.codegen.factoryMode": "NO_CODEGEN",
              "spark.sql.adaptive.enabled": "false", "spark.databricks.delta.snapshotPartitions": "1",
              "spark.sql.sources.parallelPartitionDiscovery.parallelism": "2"}
TINY_SPARK_SETS = [f"spark.conf.{k}={v}" for k, v in TINY_SPARK.items()]  # as --set overrides

# The tests' session JVM runs for the whole run but each of its queries briefly: its optimizing (C2) JIT
# compiles methods that then run a few times more (a third of that JVM's CPU). Compiling only what
# stays hot (thresholds about 4x the JVM's defaults) takes 10-14 % less CPU over the in-process test
# files. The jobs' own JVMs, short-lived, start with the C1 JIT only (SHORT_JVM_OPTS).
SESSION_JVM_OPTS = ("-XX:Tier4InvocationThreshold=20000 -XX:Tier4MinInvocationThreshold=2400 "
                    "-XX:Tier4CompileThreshold=60000 -XX:Tier4BackEdgeThreshold=160000")


def tiny_logs(users: int, history_days: int, impression_days: int, impressions_per_user_day: int) -> list[str]:
    return [f"generator.users={users}", f"generator.history_days={history_days}",
            f"generator.impression_days={impression_days}", "generator.mean_behaviors_per_user=30",
            "generator.max_behaviors_per_user=200", "generator.heavy_users=1",
            f"generator.impressions_per_user_day={impressions_per_user_day}", "generator.items=500",
            "generator.categories=10", "generator.topics=4", "validation.max_reject_ratio=0.5",
            "windows.long_days=8", "windows.short_days=3", "caps.long_cap=20", "caps.hard_k=10",
            "caps.short_cap=5"]


# The session's one tiny pipeline (conftest.tiny_pipeline): 8 users, 17 days of history, impressions on
# the last two days; the generator's "now" fixed (its reject rules compare timestamps with it).
TINY_PIPELINE = tiny_logs(8, 17, 2, 3)
TINY_NOW = 1_767_225_600  # 2026-01-01
TINY_D0 = "2024-06-29"  # UBT(D0): the full build
TINY_DATES = ("2024-06-30", "2024-07-01")  # the impression days: UBT(06-30) nightly, samples of both
