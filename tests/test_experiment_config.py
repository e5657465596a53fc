"""The experiment configuration: every value is typed and refused, naming its key, before any data is
read or any worker starts; the model's sizes are checked against what the samples table recorded."""
from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pytest

from conftest import ROOT, subprocess_env
from helpers.samples_table import samples_frame
from sim.config import ConfigError
from sim.config.experiment import load_experiment
from sim.training.experiment import resolve_data

CONF = ROOT / "conf" / "experiments.yaml"
DATES = ["2024-06-28", "2024-06-29", "2024-06-30", "2024-07-01"]


@pytest.mark.parametrize("override, message", [
    ("model.emb_dim=abc", "model.emb_dim: Input should be a valid integer, unable to parse string as an "
                          "integer (got 'abc')"),
    ("model.dropout=1.5", "model.dropout: Input should be less than 1"),
    ("model.colour=red", "model: unknown model config keys ['colour']"),
    ("model.name=transformer", "model.name: unknown model 'transformer'; known models: din"),
    ("train.batch_size=0", "train.batch_size: Input should be greater than 0 (got 0)"),
    ("train.lr=fast", "train.lr: Input should be a valid number"),
    ("train.epochs=2.5", "train.epochs: Input should be a valid integer, got a number with a fractional part"),
    ("samples_version=-1", "samples_version: Input should be greater than or equal to 0"),
    ("test_dates=[2024-07-01]", "test_dates: must be [first, last] dates"),
    ("valid_dates=[2024-07-01,2024-06-30]", "valid_dates: [first, last] is empty: first date 2024-07-01"),
    ("test_dates=[2024-06-30,2024-06-30]", "valid_dates 2024-06-30..2024-06-30 must end before test_dates"),
    ("trian.epochs=1", "trian: unknown key; known: dataset, experiment, expid, lakehouse, model"),
    # Test hooks are environment variables of sim.faults, no settings of the user's config.
    ("train.fail_after_epoch=1", "train.fail_after_epoch: unknown key; known: batch_size"),
])
def test_every_bad_value_is_refused_naming_its_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_experiment(CONF, "sim_soft_time", [override])
    assert message in str(e.value) and "experiments.yaml (expid sim_soft_time)" in str(e.value), str(e.value)


def test_loaded_values_are_typed_plain_values():
    cfg = load_experiment(CONF, "sim_hard", ["model.emb_dim=4", "train.lr=0.01", "test_dates=[2024-07-01,2024-07-01]"])
    assert cfg["model"]["emb_dim"] == 4 and cfg["model"]["name"] == "sim_hard" and cfg["train"]["lr"] == 0.01
    assert cfg["test_dates"] == ["2024-07-01", "2024-07-01"]  # ISO strings, what MLflow logs
    assert cfg["model"]["time_gap_buckets"] == 64 and cfg["samples_version"] is None
    json.dumps(cfg)  # plain values only


def test_cli_refuses_a_bad_value_before_any_work(tmp_path):
    """`--set model.emb_dim=abc` used to pass the pre-launch check and die in both ranks with a torch
    TypeError; now the launcher exits 2 naming the key, before reading data or starting horovodrun."""
    proc = subprocess.run([sys.executable, "-m", "sim.train", "--config", str(CONF), "--expid", "din", "--np", "2",
                           "--set", "model.emb_dim=abc", "--set", f"lakehouse={tmp_path / 'none'}"],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "model.emb_dim: Input should be a valid integer" in proc.stderr
    assert "launching" not in proc.stderr and "no Delta table" not in proc.stderr


@pytest.mark.parametrize("override, message", [
    ("model.gsu_alpha=0.5", "model (sim_hard): gsu_alpha=0.5 needs a soft-search model"),
    ("model.mimn_miu_topk=9", "model (sim_hard): need slots >= 1 and 1 <= miu_topk <= slots"),
])
def test_rules_of_the_model_parts_are_checked_before_work(override, message):
    from sim.config.experiment import check_model_builds
    cfg = load_experiment(CONF, "sim_hard", [override] + (["model.name=mimn"] if "mimn" in override else []))
    with pytest.raises(ConfigError) as e:
        check_model_builds(cfg)
    assert message.replace("sim_hard", cfg["model"]["name"]) in str(e.value), str(e.value)


def _write_samples(path, sizes: dict | None) -> list[int]:
    """A samples table of the four dates written by delta-rs, one commit per date recording ``sizes``
    as the samples job does (userMetadata); returns the versions."""
    from deltalake import CommitProperties, write_deltalake
    for i, d in enumerate(DATES):
        meta = {"job": "build_samples", "date": d, **({"sizes": sizes} if sizes else {})}
        frame = samples_frame(30, d, seed=i + 1)
        write_deltalake(str(path), pa.Table.from_pandas(frame, preserve_index=False), partition_by=["dt"],
                        mode="append", commit_properties=CommitProperties(
                            custom_metadata={"userMetadata": json.dumps(meta)}))
    return list(range(len(DATES)))


def _experiment(lakehouse, *overrides: str) -> dict:
    return load_experiment(CONF, "sim_hard_time", [f"lakehouse={lakehouse}", *overrides])


def test_model_sizes_are_checked_against_the_samples_metadata(tmp_path):
    _write_samples(tmp_path / "samples", {"short_cap": 8, "hard_k": 10, "long_cap": 20, "time_gap_buckets": 32})
    manifest = resolve_data(_experiment(tmp_path))  # 64 rows >= 32 buckets, hard_k unset: fits
    assert manifest.samples_version == 3 and manifest.rows("train") == 60
    with pytest.raises(ConfigError, match=r"model.time_gap_buckets=16 but the samples hold time-gap bucket ids "
                                          r"up to 31 .*set model.time_gap_buckets=32"):
        resolve_data(_experiment(tmp_path, "model.time_gap_buckets=16"))
    with pytest.raises(ConfigError, match=r"model.hard_k=50 but the samples keep 10 hard-search behaviors"):
        resolve_data(_experiment(tmp_path, "model.hard_k=50"))
    resolve_data(_experiment(tmp_path, "model.hard_k=10"))


def test_the_dates_of_a_run_share_one_time_gap_scale(tmp_path):
    """Each samples commit records its time_gap_per_octave; a run whose dates were bucketed at two scales
    is refused (one bucket id would mean other gaps on other dates) until the odd date is rebuilt: a
    date's scale is its newest commit's. Commits of before the option record none: r = 1."""
    from deltalake import CommitProperties, write_deltalake
    path = tmp_path / "samples"
    sizes = {"short_cap": 8, "hard_k": 10, "long_cap": 20, "time_gap_buckets": 64}

    def commit(i: int, d: str, **scale) -> None:
        meta = {"job": "build_samples", "date": d, "sizes": {**sizes, **scale}}
        frame = pa.Table.from_pandas(samples_frame(30, d, seed=i + 1), preserve_index=False)
        write_deltalake(str(path), frame, partition_by=["dt"], mode="overwrite", predicate=f"dt = '{d}'",
                        commit_properties=CommitProperties(custom_metadata={"userMetadata": json.dumps(meta)}))
    for i, d in enumerate(DATES[:-1]):
        commit(i, d)  # no scale recorded
    commit(3, DATES[-1], time_gap_per_octave=4)
    with pytest.raises(ConfigError, match=r"the samples of 2024-06-28..2024-07-01 were bucketed with "
                                          r"time_gap_per_octave 1 and 4 .*rebuild them with one"):
        resolve_data(_experiment(tmp_path))
    commit(4, DATES[-1], time_gap_per_octave=1)  # the date rebuilt at the others' scale
    assert resolve_data(_experiment(tmp_path)).rows("test") == 30


def test_samples_version_pins_the_snapshot(tmp_path):
    _write_samples(tmp_path / "samples", None)  # no sizes recorded (an older table): not checked
    assert resolve_data(_experiment(tmp_path, "model.time_gap_buckets=2")).samples_version == 3
    with pytest.raises(ConfigError, match=r"no samples for test_dates 2024-07-01..2024-07-01 .*version 2"):
        resolve_data(_experiment(tmp_path, "samples_version=2"))  # 07-01 was written at version 3
    with pytest.raises(ConfigError, match=r"samples_version=9: the log of .* cannot give it"):
        resolve_data(_experiment(tmp_path, "samples_version=9"))
