"""What the served model was trained on, against what the store's snapshot was exported with: a model
scores rows built with the samples settings it was trained on (windows, caps, time-gap buckets and their
scale), or its scores are not the ones it was validated with (train/serve skew).

The training side is read from the lakehouse's own records: the run's params name the samples table
(``data.samples_path``) and the versions of the samples commits whose rows it read
(``comparison.samples_versions``; ``data.samples_version`` for runs that logged no comparison), and each of
those commits records the settings its rows were built with (:attr:`sim.samples.contract.SampleSpec.settings`,
sim.adapters.lineage). The serving side is the ``settings`` the export recorded with the snapshot
(:mod:`sim.serving.export`). They must be equal, key by key.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Mapping

log = logging.getLogger(__name__)


class SettingsMismatch(RuntimeError):
    """The snapshot was exported with other samples settings than the model was trained on; the message
    names each differing key, both values and what to do."""


@dataclass(frozen=True)
class TrainedOn:
    """The samples settings a run's model was trained on and where they were read."""
    settings: dict
    source: str  # e.g. "samples versions 3,4 of /lake/samples (run 0a1b...)"


def trained_on(run_id: str, tracking_uri: str | None = None) -> TrainedOn:
    """The samples settings the run's model was trained on (module docstring). Raises
    :class:`SettingsMismatch` when the run's samples commits record none or several different ones."""
    from sim.adapters import delta_io, tracking
    params = tracking.params_of_run(run_id, tracking_uri)
    path = params.get("data.samples_path")
    versions = params.get("comparison.samples_versions") or params.get("data.samples_version")
    if not path or not versions:
        raise SettingsMismatch(f"run {run_id} logged no samples table and version (data.samples_path, "
                               f"comparison.samples_versions): what its model was trained on cannot be checked "
                               f"against the store; serve a model of a run trained by sim.train (or start the service "
                               f"with --no-settings-check)")
    wanted = sorted({int(v) for v in str(versions).split(",") if v.strip()})
    where = f"samples version{'s' if len(wanted) > 1 else ''} {','.join(map(str, wanted))} of {path} (run {run_id})"
    try:
        commits = dict(delta_io.log_commit_metadata(path, max(wanted)))
    except Exception as e:  # noqa: BLE001 - the table is gone or unreadable: say which, and what to do
        raise SettingsMismatch(f"the samples the model was trained on cannot be read ({where}): {e}; the "
                               f"service checks the store's snapshot against them, so it needs the lakehouse "
                               f"the run read") from e
    found = [commits[v]["settings"] for v in wanted if isinstance(commits.get(v, {}).get("settings"), dict)]
    distinct = {json.dumps(s, sort_keys=True) for s in found}
    if not distinct:
        raise SettingsMismatch(f"the samples commits the model was trained on record no settings ({where}): "
                               f"rebuild the samples with jobs/build_samples.py and retrain, so they can be "
                               f"checked against the store")
    if len(distinct) > 1:
        raise SettingsMismatch(f"the model was trained on samples built with different settings ({where}): "
                               f"{sorted(distinct)}; no one snapshot serves it as it was trained")
    return TrainedOn(found[0], where)


def check_snapshot(trained: TrainedOn, snapshot_settings: Mapping, snapshot: str, store: str) -> None:
    """Raise :class:`SettingsMismatch` naming each key whose value differs between the samples the model
    was trained on and the snapshot ``snapshot`` (e.g. ``UBT(2024-06-30)``) of ``store``."""
    missing = object()
    mine, theirs = dict(snapshot_settings or {}), trained.settings
    diff = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k, missing) != theirs.get(k, missing)]
    if not diff:
        return

    def show(d: Mapping, k: str) -> str:
        return repr(d[k]) if k in d else "(not recorded)"

    lines = [f"{k}: trained on {show(theirs, k)}, snapshot {show(mine, k)}" for k in diff]
    sets = " ".join(f"--set {k}={theirs[k]}" for k in diff if k in theirs)
    raise SettingsMismatch(
        f"the {store} serves {snapshot} exported with other samples settings than the model was trained on "
        f"({trained.source}):\n  " + "\n  ".join(lines)
        + f"\nRe-export the snapshot with the training's settings (jobs/export_ubt.py --date D --store ... {sets}; "
          f"the UBT must have been built with them too), or serve a model trained on samples built with the "
          f"snapshot's.")
