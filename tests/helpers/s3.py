"""A real S3 server for the tests: s3proxy (``python -m sim.local.s3server``'s configuration) over a
directory, on 127.0.0.1 at a free port, in its own process group, stopped with the group when the block ends (also
on failure). Yields what a client needs: the endpoint, the bucket and credentials, as the ``AWS_*``
variables every reader takes and as the Hadoop S3A settings of an already running Spark session."""
from __future__ import annotations

import contextlib
import dataclasses
import secrets
from pathlib import Path
from typing import Iterator


@dataclasses.dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    root: Path  # the directory that holds the buckets

    @property
    def env(self) -> dict[str, str]:
        """The ``AWS_*`` variables of the pipeline's object storage settings (README "Object storage")."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}

    @property
    def hadoop_conf(self) -> dict[str, str]:
        """S3A settings for a Spark session whose JVM started before these variables were set: what
        get_spark derives from them, plus the credentials S3A would otherwise read from its environment."""
        from sim.adapters.storage import spark_s3a_conf
        out = {k.removeprefix("spark.hadoop."): v for k, v in spark_s3a_conf(self.env).items()}
        out.update({"fs.s3a.access.key": self.access_key, "fs.s3a.secret.key": self.secret_key})
        return out


@contextlib.contextmanager
def s3proxy(work: Path, port: int, bucket: str = "lake", timeout: float = 120) -> Iterator[S3Server]:
    """s3proxy started (and stopped with its process group) by :class:`sim.local.cluster.LocalCluster`."""
    from sim.local.cluster import LocalCluster
    access, secret = "test-" + secrets.token_hex(4), secrets.token_hex(16)
    with LocalCluster(work, bucket=bucket, access_key=access, secret_key=secret) as cluster:
        cluster.start_s3(port, timeout=timeout)
        yield S3Server(cluster.s3_endpoint, bucket, access, secret, cluster.s3_root)
