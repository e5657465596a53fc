"""Lakehouse locations in one place: a local directory or an S3 URI (``s3a://bucket/prefix`` or
``s3://bucket/prefix``), and how each reader reaches it.

The same table has two spellings, one per kind of reader, and this module maps between them:
- Spark (through Hadoop's S3A connector) reads ``s3a://``: :func:`spark_uri`. Hadoop has no ``s3://``
  file system unless one is configured, so every path handed to Spark is spelled ``s3a://``.
- delta-rs (``deltalake``) and pyarrow (Petastorm's Parquet reads) take ``s3://``: :func:`arrow_uri`.
Local paths are left as they are by both (made absolute by :func:`join`), so nothing changes for a
lakehouse on disk; a location is never handed to ``os.path`` unless :func:`is_remote` says it is local.

Endpoint and credentials are never in code. The non-JVM readers take them from the standard ``AWS_*``
environment variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ALLOW_HTTP``): :func:`delta_storage_options` and
:func:`arrow_filesystem`. Spark takes them from ``spark.hadoop.fs.s3a.*`` settings (conf/pipeline.yaml's
``spark.conf`` or ``--set spark.conf.spark.hadoop.fs.s3a.endpoint=...``); where those are unset,
:func:`spark_s3a_conf` derives the endpoint and region from the same ``AWS_*`` variables, so one set of
variables serves every reader. S3A reads ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` from the
environment itself (its default credential chain), so credentials are never copied into Spark confs.
"""
from __future__ import annotations

import functools
import os
import posixpath
from typing import Mapping
from urllib.parse import unquote, urlparse

S3_SCHEMES = ("s3", "s3a", "s3n")
SPARK_S3_SCHEME = "s3a"   # Hadoop's S3 connector
ARROW_S3_SCHEME = "s3"    # delta-rs, pyarrow, fsspec


def is_remote(location: str) -> bool:
    """True for an S3 URI (any of :data:`S3_SCHEMES`); False for a local path or ``file:`` URI."""
    return urlparse(str(location)).scheme.lower() in S3_SCHEMES


def _with_scheme(location: str, scheme: str) -> str:
    if not is_remote(location):
        return location
    return scheme + location[location.index("://"):]


def spark_uri(location: str) -> str:
    """The spelling Spark reads: ``s3a://`` for any S3 URI; a local path unchanged."""
    return _with_scheme(location, SPARK_S3_SCHEME)


def arrow_uri(location: str) -> str:
    """The spelling delta-rs and pyarrow read: ``s3://`` for any S3 URI; a local path unchanged."""
    return _with_scheme(location, ARROW_S3_SCHEME)


def join(root: str, *parts: str) -> str:
    """``root`` / ``parts``: an absolute local path (``os.path``, as before) or an S3 URI joined with
    ``/`` (an object key has no ``..`` or current directory to resolve)."""
    if not is_remote(root):
        return os.path.join(os.path.abspath(root), *parts)
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


def bucket_key(location: str) -> str:
    """``bucket/key`` of an S3 URI: what pyarrow's and fsspec's S3 file systems take as a path."""
    u = urlparse(location)
    return u.netloc + u.path


def object_path(root: str, relative: str) -> str:
    """The location of a data file a Delta log lists (``relative`` is URI-encoded, as the Delta protocol
    records it, or already absolute). S3 keys are decoded once; local paths keep their own handling
    (:func:`sim.adapters.delta_io._local_path`)."""
    if "://" in relative:
        return unquote(relative) if is_remote(relative) else relative
    if is_remote(root):
        return join(root, unquote(relative))
    return posixpath.join(root, relative)


# ------------------------------------------------------------------------------ settings from AWS_*
def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def _truthy(value: str | None) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes")


def region(env: Mapping[str, str] | None = None) -> str | None:
    e = _env(env)
    return e.get("AWS_REGION") or e.get("AWS_DEFAULT_REGION") or None


DELTA_OPTION_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                     "AWS_ALLOW_HTTP")


def delta_storage_options(location: str, env: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """``storage_options`` for ``deltalake.DeltaTable`` at ``location``: the ``AWS_*`` variables that are
    set (None for a local table). delta-rs would read most of them from the environment by itself;
    handing them over keeps the one source visible and lets a caller pass another environment."""
    if not is_remote(location):
        return None
    e = _env(env)
    options = {k: e[k] for k in DELTA_OPTION_KEYS if e.get(k)}
    if region(e):
        options["AWS_REGION"] = region(e)
    return options


ARROW_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
              "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP")


def arrow_filesystem(env: Mapping[str, str] | None = None):
    """A ``pyarrow.fs.S3FileSystem`` configured from the ``AWS_*`` variables. An ``AWS_ENDPOINT_URL``
    (S3-compatible stores: MinIO, s3proxy, Ceph) gives the endpoint and its scheme (http or https); the
    store is then addressed path-style, as delta-rs does. One instance per distinct setting (a training
    rank opens every row group through it)."""
    e = _env(env)
    return _arrow_filesystem(tuple((k, e.get(k)) for k in ARROW_KEYS))


@functools.lru_cache(maxsize=8)
def _arrow_filesystem(settings: tuple[tuple[str, str | None], ...]):
    from pyarrow import fs

    e = {k: v for k, v in settings if v}
    kwargs: dict = {}
    if e.get("AWS_ACCESS_KEY_ID"):
        kwargs.update(access_key=e["AWS_ACCESS_KEY_ID"], secret_key=e.get("AWS_SECRET_ACCESS_KEY"),
                      session_token=e.get("AWS_SESSION_TOKEN") or None)
    if region(e):
        kwargs["region"] = region(e)
    endpoint = e.get("AWS_ENDPOINT_URL")
    if endpoint:
        u = urlparse(endpoint if "://" in endpoint else "https://" + endpoint)
        if u.scheme == "http" and not _truthy(e.get("AWS_ALLOW_HTTP")):
            raise ValueError(f"AWS_ENDPOINT_URL={endpoint} is plain http: set AWS_ALLOW_HTTP=true to allow it "
                             "(delta-rs refuses it otherwise too)")
        kwargs.update(endpoint_override=u.netloc, scheme=u.scheme)
    return fs.S3FileSystem(**kwargs)


def is_dir(location: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``location`` is a directory (on S3: a prefix that holds objects)."""
    if not is_remote(location):
        return os.path.isdir(location)
    from pyarrow import fs
    return arrow_filesystem(env).get_file_info(bucket_key(location)).type == fs.FileType.Directory


def parquet_metadata(location: str, env: Mapping[str, str] | None = None):
    """The footer (``pyarrow.parquet.FileMetaData``) of the Parquet file at ``location``: a local path,
    ``file:`` URI or S3 URI (either spelling)."""
    import pyarrow.parquet as pq

    if not is_remote(location):
        return pq.ParquetFile(location.removeprefix("file://")).metadata
    filesystem = arrow_filesystem(env)
    with filesystem.open_input_file(bucket_key(location)) as f:
        return pq.ParquetFile(f).metadata


# Petastorm 0.12 with pyarrow 14 reads through the pre-``pyarrow.fs`` file system API (its ParquetDataset
# options exist only there), and turns every URL that is not file:// or hdfs:// into a path with fsspec's
# registry, which knows s3:// only through the s3fs package (not in our stack, and its file systems are
# not of that API either). So Petastorm gets S3 files as URLs of a scheme of our own, registered with
# fsspec only to strip it (``scheme://bucket/key`` -> ``bucket/key``), and a file system of that API over
# pyarrow's S3 file system that reads those paths.
PETASTORM_S3_SCHEME = "sim-arrow-s3"


def petastorm_url(location: str) -> str:
    """The URL Petastorm is given for a file: S3 URIs with :data:`PETASTORM_S3_SCHEME` (read through
    :func:`petastorm_filesystem`), others unchanged."""
    return _with_scheme(location, PETASTORM_S3_SCHEME) if is_remote(location) else location


@functools.lru_cache(maxsize=1)
def _petastorm_s3_class():
    import fsspec
    from pyarrow import fs
    from pyarrow.filesystem import FileSystem

    class PetastormPaths(fsspec.AbstractFileSystem):
        """Names ``sim-arrow-s3://bucket/key`` as ``bucket/key`` for fsspec; reads nothing."""
        protocol = PETASTORM_S3_SCHEME

        @classmethod
        def _strip_protocol(cls, path):
            path = str(path)
            prefix = PETASTORM_S3_SCHEME + "://"
            return path[len(prefix):] if path.startswith(prefix) else path

    fsspec.register_implementation(PETASTORM_S3_SCHEME, PetastormPaths, clobber=True)

    class PetastormS3(FileSystem):
        """Read-only ``bucket/key`` paths on a ``pyarrow.fs.S3FileSystem``, in the API Petastorm calls."""

        def __init__(self, s3):
            self.s3 = s3

        def _type(self, path):
            return self.s3.get_file_info(str(path)).type

        def isdir(self, path):
            return self._type(path) == fs.FileType.Directory

        def isfile(self, path):
            return self._type(path) == fs.FileType.File

        def exists(self, path):
            return self._type(path) != fs.FileType.NotFound

        def _isfilestore(self):
            return False

        def ls(self, path):
            return [i.path for i in self.s3.get_file_info(fs.FileSelector(str(path)))]

        def open(self, path, mode="rb"):
            if mode != "rb":
                raise ValueError(f"read-only file system: cannot open {path} with mode {mode!r}")
            return self.s3.open_input_file(str(path))

    return PetastormS3


def petastorm_filesystem(location: str, env: Mapping[str, str] | None = None):
    """The file system Petastorm reads ``location`` (a file of the list it is given) with: None for
    local files (Petastorm's own), else :func:`arrow_filesystem` in the API Petastorm calls."""
    if not is_remote(location):
        return None
    return _petastorm_s3_class()(arrow_filesystem(env))


def spark_s3a_conf(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``spark.hadoop.fs.s3a.*`` defaults derived from ``AWS_ENDPOINT_URL`` and ``AWS_REGION``: the
    endpoint, its region, and path-style access (what delta-rs and pyarrow use with a custom
    endpoint; S3-compatible servers such as s3proxy and MinIO need it). Empty without an endpoint
    variable: S3A then talks to AWS itself with its own defaults. Settings in ``spark.conf`` win."""
    e = _env(env)
    endpoint = e.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return {}
    prefix = "spark.hadoop.fs.s3a."
    out = {prefix + "endpoint": endpoint, prefix + "path.style.access": "true"}
    if region(e):
        out[prefix + "endpoint.region"] = region(e)
    return out


# ------------------------------------------------------------------------------ a store that fails
# What a failure of the object store looks like from a Spark job: S3A's exceptions, the AWS SDK's, or
# an I/O error on an s3a:// path (connection refused, timeouts after S3A's retries).
_STORE_CLASSES = ("org.apache.hadoop.fs.s3a.", "software.amazon.awssdk.")
_IO_MARKERS = ("Unable to execute HTTP request", "Connection refused", "ConnectException",
               "SocketTimeoutException", "connect timed out", "Read timed out", "No route to host")


def store_failure(exc: BaseException, env: Mapping[str, str] | None = None) -> str | None:
    """One line saying the object store failed, naming it (``AWS_ENDPOINT_URL``, else S3) and the
    first line of the error that shows it, when ``exc`` (a Spark job's exception, Java stack trace
    included) is such a failure; None for any other error, which the caller re-raises."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    hit = [ln for ln in lines if any(c in ln for c in _STORE_CLASSES)]
    if not hit and "s3a://" in text:
        hit = [ln for ln in lines if any(m in ln for m in _IO_MARKERS)]
    if not hit:
        return None
    endpoint = _env(env).get("AWS_ENDPOINT_URL") or "S3 (AWS)"
    paths = sorted({w.strip("'\"():,;.`") for ln in lines for w in ln.split() if w.startswith(("s3a://", "'s3a://"))})
    where = f" at {paths[0]}" if paths else ""
    return f"the object store {endpoint} failed{where}: {hit[0].lstrip(': ')[:400]}"
