"""Public datasets fetched from the package registry, cached outside the checkout.

MovieLens-100k ships inside the ``recbole`` wheel on PyPI as RecBole atomic files
(``recbole/dataset_example/ml-100k/ml-100k.inter`` and ``ml-100k.item``). :func:`ml100k` downloads
the wheel once (``pip download --no-deps recbole==1.2.1``), extracts those two files into
``$SIM_CACHE/recbole-1.2.1/ml-100k/`` and returns that directory, ready for
``jobs/import_dataset.py --format movielens --input DIR``. The data is never committed.
"""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from sim.adapters.spark import cache_dir

RECBOLE_VERSION = "1.2.1"
ML100K_FILES = ("ml-100k.inter", "ml-100k.item")
_IN_WHEEL = "recbole/dataset_example/ml-100k/"


class DatasetFetchError(RuntimeError):
    """The dataset could not be downloaded or is not where the wheel should have it."""


def ml100k(cache: Path | None = None) -> Path:
    """The directory holding MovieLens-100k's RecBole atomic files, fetching them on first use."""
    root = (cache or cache_dir()) / f"recbole-{RECBOLE_VERSION}"
    out = root / "ml-100k"
    if all((out / f).is_file() for f in ML100K_FILES):
        return out
    root.mkdir(parents=True, exist_ok=True)
    wheels = sorted(root.glob(f"recbole-{RECBOLE_VERSION}-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"recbole=={RECBOLE_VERSION}",
               "-d", str(root)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(root.glob(f"recbole-{RECBOLE_VERSION}-*.whl"))
        if r.returncode != 0 or not wheels:
            raise DatasetFetchError(f"`{' '.join(cmd)}` failed ({r.returncode}); PyPI must be reachable "
                                    f"to fetch MovieLens-100k:\n{r.stderr[-2000:]}")
    out.mkdir(exist_ok=True)
    with zipfile.ZipFile(wheels[-1]) as z:
        for name in ML100K_FILES:
            try:
                data = z.read(_IN_WHEEL + name)
            except KeyError:
                raise DatasetFetchError(f"{wheels[-1]} has no {_IN_WHEEL + name}") from None
            part = out / (name + ".part")
            part.write_bytes(data)
            part.replace(out / name)  # a file is either absent or whole
    return out
