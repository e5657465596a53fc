"""A tiny job for spark-submit tests: writes ids 0..n-1 as a Delta table and reads them back."""
import sys

from sim.spark import get_spark

path, n = sys.argv[1], int(sys.argv[2])
spark = get_spark("tiny-delta-job")
spark.range(n).repartition(2).write.format("delta").mode("overwrite").save(path)
count = spark.read.format("delta").load(path).count()
assert count == n, count
print(f"TINY_JOB_OK rows={count} master={spark.sparkContext.master}")
spark.stop()
