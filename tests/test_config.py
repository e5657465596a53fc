from sim.config import apply_overrides, ConfigError, load_pipeline_conf
import pytest


def test_dotted_overrides_reach_nested_and_spark_keys():
    cfg = {"spark": {"conf": {"spark.sql.shuffle.partitions": "4"}}, "windows": {"long_days": 180}}
    out = apply_overrides(cfg, ["windows.long_days=30", "spark.conf.spark.sql.shuffle.partitions=8",
                                "new.key=true"])
    assert out["windows"]["long_days"] == 30
    assert out["spark"]["conf"]["spark.sql.shuffle.partitions"] == 8
    assert out["new"]["key"] is True
    assert cfg["windows"]["long_days"] == 180  # input untouched


def test_bad_override_and_missing_file_fail_with_message(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["nonsense"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_pipeline_conf(tmp_path / "nope.yaml")


def test_pipeline_conf_loads_with_lakehouse_override(tmp_path):
    cfg = load_pipeline_conf(lakehouse=str(tmp_path))
    assert cfg["lakehouse"] == str(tmp_path)
    assert cfg["windows"]["long_days"] == 180


def test_demo_models_all_and_unknown_names():
    from sim.demo import resolve_models
    from sim.models import MODEL_NAMES
    assert resolve_models("all") == list(MODEL_NAMES) and "mimn" in MODEL_NAMES and "dien" in MODEL_NAMES
    assert resolve_models("din, sim_hard") == ["din", "sim_hard"]
    with pytest.raises(SystemExit, match="known models: din"):
        resolve_models("din,simm_soft")
