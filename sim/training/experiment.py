"""An experiment's data: the samples snapshot it trains on (its configuration: :mod:`sim.config.experiment`).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging

import numpy as np

from sim.config import ConfigError
from sim.config.experiment import SPLITS, date_range, load_experiment  # noqa: F401 (re-exported)
from sim.adapters.delta_io import MissingTableError

log = logging.getLogger("sim.train")

# ------------------------------------------------------------------------------------------------ data
@dataclasses.dataclass
class DataManifest:
    """What a run reads: the samples table version and the files of its snapshot per split."""
    samples_path: str
    samples_version: int
    files: dict[str, list[tuple[str, int]]]  # split -> (path, rows)

    def paths(self, split: str) -> list[str]:
        return [p for p, _ in self.files[split]]

    def rows(self, split: str) -> int:
        return sum(n for _, n in self.files[split])

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "DataManifest":
        d = json.loads(text)
        d["files"] = {k: [tuple(x) for x in v] for k, v in d["files"].items()}
        return cls(**d)


def resolve_data(cfg: dict) -> DataManifest:
    """List the samples snapshot's files for each split's dates, from the Delta log (no JVM): the latest
    version, or ``samples_version`` when the experiment pins one; then check the model fits them."""
    from sim.adapters import delta_io

    path = delta_io.table_path(cfg["lakehouse"], cfg["samples_table"])
    hint = "build it with `python jobs/build_samples.py --date D` (or check `lakehouse` in the config)"
    pinned = cfg.get("samples_version")
    try:
        snap = delta_io.log_snapshot(path, pinned)
    except MissingTableError as e:
        if pinned is not None and delta_io.log_exists(path):
            raise ConfigError(f"samples_version={pinned}: the log of {path} cannot give it ({e}); unset it "
                              "to train on the latest version, or name one the log still holds") from None
        raise MissingTableError(f"{e}; {hint}") from None
    files = {}
    for split in SPLITS:
        first, last = date_range(cfg, split)
        found = snap.between(first, last)
        if not found:
            raise ConfigError(f"no samples for {split}_dates {first}..{last} in {path} (version "
                              f"{snap.version}); dates present: {', '.join(snap.dates) or 'none'}")
        files[split] = [(f.path, f.num_rows) for f in found]
    check_model_fits(cfg, path, snap.version)
    return DataManifest(path, snap.version, files)


def _covers(meta: dict, first: str, last: str) -> bool:
    """Whether a samples commit (one date, or a replay's ``from``..``to``) wrote a date in first..last."""
    lo, hi = meta.get("from", meta.get("date")), meta.get("to", meta.get("date"))
    return lo is not None and hi is not None and lo <= last and hi >= first


def _days(first: str, last: str) -> list[str]:
    a, b = _dt.date.fromisoformat(first), _dt.date.fromisoformat(last)
    return [(a + _dt.timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


def check_model_fits(cfg: dict, path: str, version: int) -> None:
    """The model's sizes against the ``sizes`` every samples commit records (sim.samples.contract):
    time-gap ids index the model's table (fewer rows would fail at the first step with an index
    error), the dates' time gaps share one scale (``time_gap_per_octave``), and a hard-search ``hard_k``
    above the samples' K would silently see fewer behaviors. Checked
    over the commits that wrote the experiment's dates; tables written without sizes are not checked."""
    from sim.adapters import delta_io
    first, last = date_range(cfg, SPLITS[0])[0], date_range(cfg, SPLITS[-1])[1]
    commits = [m for _, m in delta_io.log_commit_metadata(path, version)  # oldest first
               if isinstance(m.get("sizes"), dict) and _covers(m, first, last)]
    recorded = [m["sizes"] for m in commits]
    if not recorded:
        log.info("the samples at %s record no sizes for %s..%s: model sizes not checked", path, first, last)
        return
    model, problems = cfg["model"], []
    # One scale of time gaps per run: a bucket id must mean the same hours in every split. A date's
    # scale is its newest commit's (a rebuilt date replaced its rows); commits written before the
    # option record none: log2, r = 1.
    newest: dict[str, int] = {}
    for m in commits:
        for d in _days(max(first, m.get("from", m.get("date"))), min(last, m.get("to", m.get("date")))):
            newest[d] = int(m["sizes"].get("time_gap_per_octave", 1))
    scales = sorted(set(newest.values()))
    if len(scales) > 1:
        problems.append(f"the samples of {first}..{last} were bucketed with time_gap_per_octave "
                        f"{' and '.join(map(str, scales))} (the same bucket id means other gaps on other "
                        f"dates): rebuild them with one time_gap_per_octave")
    gaps = max(int(s["time_gap_buckets"]) for s in recorded)
    if int(model["time_gap_buckets"]) < gaps:
        problems.append(f"model.time_gap_buckets={model['time_gap_buckets']} but the samples hold time-gap "
                        f"bucket ids up to {gaps - 1} (written with time_gap_buckets={gaps}): set "
                        f"model.time_gap_buckets={gaps}")
    hard_k = min(int(s["hard_k"]) for s in recorded)
    if model.get("hard_k") is not None and int(model["hard_k"]) > hard_k:
        problems.append(f"model.hard_k={model['hard_k']} but the samples keep {hard_k} hard-search behaviors "
                        f"(caps.hard_k): set model.hard_k <= {hard_k}, or rebuild the samples with a larger "
                        f"caps.hard_k")
    if problems:
        raise ConfigError(f"the model does not fit the samples at {path} (version {version}): "
                          + "; ".join(problems))


def load_item_topics(lakehouse: str):
    """The synthetic catalog's item -> topic tensor for the diagnostics, or None without the table."""
    from sim.adapters import delta_io
    from sim.training.diagnostics import item_topic_lookup
    from sim.inputs.generator.settings import ITEM_TOPICS_TABLE

    path = delta_io.table_path(lakehouse, ITEM_TOPICS_TABLE)
    if not delta_io.log_exists(path):
        return None
    t = delta_io.open_log(path).to_pyarrow_table(columns=["item_id", "topic_id"])
    return item_topic_lookup(t.column("item_id").to_numpy(), t.column("topic_id").to_numpy())


def _to_tensors(batch: dict[str, np.ndarray]):
    import torch
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


