"""A real S3 server for the tests: s3proxy (``python -m sim.s3server``'s configuration) over a directory,
on 127.0.0.1 at a free port, in its own process group, stopped with the group when the block ends (also
on failure). Yields what a client needs: the endpoint, the bucket and credentials, as the ``AWS_*``
variables every reader takes and as the Hadoop S3A settings of an already running Spark session."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from helpers.readme import SHORT_JVM_OPTS, stop_group


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
    from sim import s3server
    access, secret = "test-" + secrets.token_hex(4), secrets.token_hex(16)
    props = s3server.prepare(work / "buckets", port, access, secret, [bucket])
    java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else "java"
    cmd = s3server.command(props, java=java, jvm_opts=SHORT_JVM_OPTS.split())
    url = f"http://127.0.0.1:{port}"
    log_path = work / "s3proxy.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while not _answers(url):
                if proc.poll() is not None:
                    raise AssertionError(f"s3proxy exited {proc.returncode}:\n{log_path.read_text()[-4000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"s3proxy did not answer on {url} within {timeout:.0f} s:\n"
                                         f"{log_path.read_text()[-4000:]}")
                time.sleep(0.5)
            yield S3Server(url, bucket, access, secret, work / "buckets")
        finally:
            stop_group(proc)


def _answers(url: str) -> bool:
    """Any HTTP answer counts: unsigned requests get 403 from s3proxy."""
    try:
        urllib.request.urlopen(url + "/", timeout=5).close()
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
    return True
