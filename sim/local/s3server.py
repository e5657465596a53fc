"""A local S3 server for the tests and a local cluster: s3proxy (Apache jclouds) over a directory, run
from the jars ``make setup`` caches in ``$SIM_CACHE/s3proxy-<version>/lib``.

    AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... python -m sim.local.s3server --dir /tmp/s3 --port 9000 --bucket lake

then point every reader at it (see the README's "Object storage"): ``AWS_ENDPOINT_URL=http://127.0.0.1:9000``
``AWS_ALLOW_HTTP=true`` ``AWS_REGION=us-east-1`` and ``--lakehouse s3a://lake/prefix``.

The jclouds ``filesystem`` provider is the one that works: with ``filesystem-nio2``, Delta cannot create
``_delta_log`` through S3A and delta-rs fails to list ("missing field Size"). s3proxy needs both its own
``s3proxy.identity/credential`` (what clients sign with) and jclouds' (the backend's). A bucket of the
filesystem provider is a directory under ``--dir``; ``--bucket`` creates it before the server starts.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

S3PROXY_VERSION = "2.6.0"


def s3proxy_lib() -> Path:
    """The cached s3proxy jars; fails naming ``make setup`` when they are not there."""
    from sim.adapters.spark import cache_dir
    d = cache_dir() / f"s3proxy-{S3PROXY_VERSION}"
    if not (d / ".complete").is_file():
        raise FileNotFoundError(f"s3proxy {S3PROXY_VERSION} is not cached in {d}: run `make setup`")
    return d / "lib"


def properties(basedir: str | os.PathLike, port: int, access_key: str, secret_key: str,
               host: str = "127.0.0.1") -> str:
    """s3proxy's configuration: an HTTP endpoint on ``host:port``, AWS v2/v4 signatures checked against
    ``access_key``/``secret_key``, objects under ``basedir`` (jclouds ``filesystem`` provider)."""
    return "\n".join([
        f"s3proxy.endpoint=http://{host}:{port}",
        "s3proxy.authorization=aws-v2-or-v4",
        f"s3proxy.identity={access_key}",
        f"s3proxy.credential={secret_key}",
        "jclouds.provider=filesystem",
        f"jclouds.identity={access_key}",
        f"jclouds.credential={secret_key}",
        f"jclouds.filesystem.basedir={Path(basedir).resolve()}",
        "",
    ])


# s3proxy's jar carries no logging configuration, and logback's default logs every request at DEBUG
# (megabytes per Delta write, and the CPU to format them): INFO unless LOG_LEVEL says otherwise.
LOGBACK = """<configuration>
  <appender name="OUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%d{HH:mm:ss.SSS} %-5level %logger{36} - %msg%n</pattern></encoder>
  </appender>
  <root level="${LOG_LEVEL:-info}"><appender-ref ref="OUT"/></root>
</configuration>
"""


def command(properties_file: str | os.PathLike, java: str = "java", jvm_opts: Sequence[str] = ()) -> list[str]:
    """The java command line that runs s3proxy with ``properties_file`` (and the logging configuration
    :func:`prepare` wrote beside it)."""
    logback = Path(properties_file).with_suffix(".logback.xml")
    return [java, *jvm_opts, f"-Dlogback.configurationFile={logback}", "-cp", str(s3proxy_lib() / "*"),
            "org.gaul.s3proxy.Main", "--properties", str(properties_file)]


def prepare(basedir: str | os.PathLike, port: int, access_key: str, secret_key: str,
            buckets: Sequence[str] = ()) -> Path:
    """Create ``basedir`` with ``buckets`` in it and write s3proxy's properties (and logging configuration)
    beside it; the properties file's path."""
    base = Path(basedir)
    for b in buckets:
        (base / b).mkdir(parents=True, exist_ok=True)
    base.mkdir(parents=True, exist_ok=True)
    props = base.parent / f"{base.name}.s3proxy.properties"
    props.touch(0o600)  # it holds the secret
    props.write_text(properties(base, port, access_key, secret_key))
    props.with_suffix(".logback.xml").write_text(LOGBACK)
    return props


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim.local.s3server", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, help="directory that holds the buckets (one sub-directory each)")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--bucket", action="append", default=[], help="create this bucket first (repeatable)")
    args = p.parse_args(argv)
    access, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not access or not secret:
        p.error("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: the credentials clients must sign with")
    props = prepare(args.dir, args.port, access, secret, args.bucket)
    print(f"s3proxy {S3PROXY_VERSION} on http://127.0.0.1:{args.port}, buckets in {Path(args.dir).resolve()}",
          file=sys.stderr, flush=True)
    return subprocess.call(command(props))


if __name__ == "__main__":
    sys.exit(main())
