"""The lakehouse on object storage: the nightly jobs write ``s3a://`` tables on a real S3 server
(s3proxy, the ``s3_server`` fixture) that hold the same rows as the same jobs on a local path; delta-rs,
pyarrow and Petastorm read them back through ``s3://`` with the ``AWS_*`` settings. Locations and
settings themselves are checked first, without a server. (A job's own JVM reaching ``s3a://`` with the
``AWS_*`` variables alone: test_cluster's re-run after the S3 server stopped; training from ``s3://`` on
a cluster with them alone: test_cluster's demo flow.)"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import ROOT, run_tiny_pipeline
from helpers.tiny_data import TINY_DATES, TINY_PIPELINE
from sim.adapters import delta_io, petastorm_io, storage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

# Small demo data: 17 days of history, impressions on 06-30 and 07-01.
SETS, DATES = TINY_PIPELINE, TINY_DATES  # the session's tiny pipeline (conftest)
TABLES = ("behaviors", "impressions", "rejects", "ubt", "samples")


# ------------------------------------------------------------------------- locations, no server needed
def test_local_lakehouse_paths_are_as_before(tmp_path):
    assert delta_io.table_path("lakehouse", "samples") == os.path.join(os.path.abspath("lakehouse"), "samples")
    assert delta_io.table_path(str(tmp_path), "ubt") == str(tmp_path / "ubt")
    assert not storage.is_remote(str(tmp_path)) and not storage.is_remote("file:///x/y")
    assert storage.spark_uri(str(tmp_path)) == storage.arrow_uri(str(tmp_path)) == str(tmp_path)
    assert storage.delta_storage_options(str(tmp_path), {"AWS_ENDPOINT_URL": "http://h:1"}) is None
    assert storage.petastorm_filesystem(str(tmp_path)) is None


def test_s3_locations_are_spelled_per_reader():
    # Spark gets s3a:// whichever spelling the lakehouse had; delta-rs and pyarrow get s3://.
    assert delta_io.table_path("s3://bucket/lake/", "samples") == "s3a://bucket/lake/samples"
    assert delta_io.table_path("s3a://bucket/lake", "samples") == "s3a://bucket/lake/samples"
    assert storage.arrow_uri("s3a://bucket/lake/samples") == "s3://bucket/lake/samples"
    assert storage.arrow_uri("s3n://bucket/x") == "s3://bucket/x" and storage.spark_uri("s3://b/x") == "s3a://b/x"
    assert storage.bucket_key("s3a://bucket/lake/samples") == "bucket/lake/samples"
    # A Delta log lists data files URI-encoded and relative to the table.
    assert (storage.object_path("s3a://bucket/t", "dt=2024-06-30/part%20a.parquet")
            == "s3a://bucket/t/dt=2024-06-30/part a.parquet")
    assert petastorm_io.file_urls(["s3a://bucket/t/f.parquet"]) == [f"{storage.PETASTORM_S3_SCHEME}://bucket/t/f.parquet"]
    assert petastorm_io.file_urls(["file:///x/f.parquet"]) == ["file:///x/f.parquet"]


def test_settings_come_from_the_aws_variables():
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "id",
           "AWS_SECRET_ACCESS_KEY": "secret", "AWS_DEFAULT_REGION": "eu-west-1", "AWS_ALLOW_HTTP": "true",
           "HOME": "/elsewhere"}
    assert storage.delta_storage_options("s3://b/t", env) == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_ALLOW_HTTP": "true", "AWS_REGION": "eu-west-1"}
    # Spark: the endpoint and region, never the credentials (S3A reads those from its environment).
    assert storage.spark_s3a_conf(env) == {
        "spark.hadoop.fs.s3a.endpoint": "http://127.0.0.1:9000", "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.endpoint.region": "eu-west-1"}
    assert storage.spark_s3a_conf({"AWS_ACCESS_KEY_ID": "id"}) == {}  # AWS itself: S3A's defaults
    fs = storage.arrow_filesystem(env)
    assert fs.region == "eu-west-1"
    with pytest.raises(ValueError, match="AWS_ALLOW_HTTP=true"):
        storage.arrow_filesystem({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"})


def test_a_failing_store_is_named_and_other_errors_are_not():
    """What a job prints (exit 3) when S3A loses the store: the endpoint, the path, the cause."""
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}
    err = RuntimeError("An error occurred while calling o71.save.\n: java.net.ConnectException: getFileStatus on "
                       "s3a://lake/x/ubt/_delta_log: software.amazon.awssdk.core.exception.SdkClientException: "
                       "Unable to execute HTTP request: Connect to 127.0.0.1:9000 failed: Connection refused\n\tat a.b")
    msg = storage.store_failure(err, env)
    assert msg.startswith("the object store http://127.0.0.1:9000 failed at s3a://lake/x/ubt/_delta_log: ")
    assert "Connection refused" in msg
    assert storage.store_failure(ValueError("no such column: x"), env) is None
    assert storage.store_failure(RuntimeError("Connection refused by the py4j gateway"), env) is None


def test_object_storage_jars_match_pyspark_and_setup():
    """hadoop-aws must be pyspark's Hadoop; setup.sh caches the versions sim.adapters.spark loads."""
    import pyspark
    from sim.adapters.spark import AWS_SDK_VERSION, HADOOP_AWS_VERSION, s3a_jars
    from sim.local.s3server import S3PROXY_VERSION
    hadoop = {m.group(1) for p in (Path(pyspark.__file__).parent / "jars").iterdir()
              if (m := re.fullmatch(r"hadoop-client-api-(.+)\.jar", p.name))}
    assert hadoop == {HADOOP_AWS_VERSION}
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert f"HADOOP_AWS_VER={HADOOP_AWS_VERSION}; AWS_SDK_VER={AWS_SDK_VERSION}; S3PROXY_VER={S3PROXY_VERSION}" in setup
    assert len(s3a_jars()) == 2, "run `make setup`: it caches hadoop-aws and the AWS SDK bundle"


# ------------------------------------------------------------------------------- on a real S3 server
@pytest.fixture(scope="module")
def s3(spark, s3_server):
    """The server's ``AWS_*`` variables in this process (delta-rs, pyarrow, subprocesses) and its S3A
    settings in the running Spark session (whose JVM started before the variables existed); both
    restored afterwards."""
    saved = {k: os.environ.get(k) for k in s3_server.env}
    os.environ.update(s3_server.env)
    hconf = spark.sparkContext._jsc.hadoopConfiguration()
    previous = {k: hconf.get(k) for k in s3_server.hadoop_conf}
    for k, v in s3_server.hadoop_conf.items():
        hconf.set(k, v)
    yield s3_server
    for k, v in previous.items():
        if v is None:
            hconf.unset(k)
        else:
            hconf.set(k, v)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def lakes(spark, s3, tiny_pipeline) -> tuple[str, str]:
    """(local lakehouse, ``s3a://`` lakehouse), each filled by the same nightly jobs (the local one is
    the session's tiny pipeline)."""
    remote = f"s3a://{s3.bucket}/nightly/lakehouse"
    run_tiny_pipeline(spark, remote)
    return str(tiny_pipeline.full), remote


def test_nightly_jobs_on_s3_write_the_rows_they_write_locally(spark, s3, lakes):
    from test_ubt import rows_of
    local, remote = lakes
    for table in TABLES:
        here = delta_io.read_table(spark, delta_io.table_path(local, table))
        there = delta_io.read_table(spark, delta_io.table_path(remote, table))
        assert there.columns == here.columns, table
        if table == "rejects":  # they record when they were rejected
            assert there.count() == here.count()
            continue
        rows = rows_of(here)
        assert rows and rows_of(there) == rows, table
    # The tables are objects of the server's bucket (its filesystem backend), not local directories.
    assert (s3.root / s3.bucket / "nightly" / "lakehouse" / "samples" / "_delta_log").is_dir()
    # (a URI joined with os.path would have made a local directory named `s3a:`)
    assert not any(p.name in ("s3:", "s3a:") for p in (*Path.cwd().iterdir(), *ROOT.iterdir()))
    # Delta's bookkeeping works there: the commits our jobs recorded, and a re-run is a no-op.
    samples = delta_io.table_path(remote, "samples")
    assert [c.date for c in delta_io.job_commits(spark, samples, "build_samples")] == list(DATES)
    from sim.config import load_pipeline_conf
    from sim.samples.contract import SampleSpec
    from sim.samples.job import build_samples
    again = build_samples(spark, remote, DATES[1], SampleSpec.from_conf(load_pipeline_conf(overrides=SETS)))
    assert again.action == "skipped"
    assert again.version == delta_io.version_for_date(spark, samples, "build_samples", DATES[1])


def _without_file_names(meta: dict) -> dict:
    """A commit's metadata without the digests of its inputs' file names and the fingerprint over them."""
    inputs = {k: {f: v for f, v in read.items() if f != "digest"} for k, read in meta.get("inputs", {}).items()}
    return {**{k: v for k, v in meta.items() if k != "fingerprint"}, "inputs": inputs}


def test_delta_rs_pyarrow_and_petastorm_read_the_s3_tables(spark, s3, lakes):
    local, remote = lakes
    here, there = delta_io.table_path(local, "samples"), delta_io.table_path(remote, "samples")
    # The log, listed by delta-rs (both spellings name the same table).
    version, files, dates = delta_io.log_snapshot_files(there)
    assert dates == list(DATES) and version == delta_io.latest_version(spark, there)
    assert ([(storage.arrow_uri(f.path), f.num_rows) for f in files]
            == [(f.path, f.num_rows) for f in delta_io.log_snapshot_files(storage.arrow_uri(there))[1]])
    assert all(f.path.startswith(there + "/dt=") for f in files)
    local_files = delta_io.log_snapshot_files(here)[1]
    assert sum(f.num_rows for f in files) == sum(f.num_rows for f in local_files) > 0
    # Spark's view of the snapshot names the same objects.
    assert sorted((f.path, f.num_rows) for f in delta_io.snapshot_files(spark, there)) == \
        sorted((f.path, f.num_rows) for f in files)
    # The same commits, recording the same settings and input versions; only what names the input data
    # files differs (each write names its part files anew, so the two lakehouses hold other names).
    assert ([_without_file_names(m) for _, m in delta_io.log_commit_metadata(there)]
            == [_without_file_names(m) for _, m in delta_io.log_commit_metadata(here)])
    assert all(read.get("digest") for _, m in delta_io.log_commit_metadata(there)
               for read in m["inputs"].values() if "files" in read)
    # Footers through pyarrow's S3 file system; rows through delta-rs and through Petastorm.
    assert [storage.parquet_metadata(f.path).num_rows for f in files] == [f.num_rows for f in files]
    ids = sorted(r.impression_id for r in delta_io.read_table(spark, here).select("impression_id").collect())
    table = delta_io.open_log(there).to_pyarrow_table(columns=["impression_id"])
    assert sorted(table.column("impression_id").to_pylist()) == ids
    with petastorm_io.open_reader([f.path for f in files], ["impression_id"]) as reader:
        got = [int(i) for b in petastorm_io.iter_batches(reader, ["impression_id"], 64) for i in b["impression_id"]]
    assert sorted(got) == ids
    groups = petastorm_io.row_groups([(f.path, f.num_rows) for f in files])
    assert sum(len(petastorm_io.read_row_group(g, ["impression_id"])["impression_id"]) for g in groups) == len(ids)
    # A lakehouse without the table: missing, not an error of the store.
    with pytest.raises(delta_io.MissingTableError):
        delta_io.log_snapshot_files(f"s3://{s3.bucket}/nothing/here")
