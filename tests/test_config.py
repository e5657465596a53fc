from conftest import ROOT
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
    assert cfg.lakehouse == str(tmp_path)
    assert cfg.windows.long_days == 180 and cfg.generator.truth.bias == -2.5


@pytest.mark.parametrize("override, message", [
    ("windows.long_days=abc", "windows.long_days: Input should be a valid integer"),
    ("windows.mode=weekly", "windows.mode: Input should be 'time' or 'count'"),
    ("caps.hard_k=0", "caps.hard_k: Input should be greater than 0"),
    ("generator.userz=3", "generator.userz: unknown key; known: burst_size"),
    ("generator.end_date=2024-13-01", "generator.end_date: '2024-13-01' is not a date"),
    ("retention.backfill_days=-1", "retention.backfill_days: Input should be greater than or equal to 0"),
    ("validation.max_reject_ratio=2", "validation.max_reject_ratio: Input should be less than or equal to 1"),
    ("windows.short_days=365", "windows: short_days=365 must not exceed long_days=180"),
    ("spark.conf.spark.executor.cores=[1]", "spark.conf.spark.executor.cores: a Spark setting must be"),
])
def test_pipeline_values_refused_naming_the_key(override, message):
    """Every pipeline value is parsed to its type when the config loads: a bad one is refused with
    the file, its dotted key, what it expects and what it got, before any job starts."""
    with pytest.raises(ConfigError) as e:
        load_pipeline_conf(overrides=[override])
    assert "pipeline.yaml" in str(e.value) and message in str(e.value), str(e.value)


def test_pipeline_values_are_typed():
    cfg = load_pipeline_conf(overrides=["spark.conf.spark.sql.shuffle.partitions=8", "windows.long_days=90",
                                        "generator.end_date=2024-07-02", "spark.conf.spark.ui.enabled=true"])
    assert cfg.spark.conf["spark.sql.shuffle.partitions"] == "8" and cfg.spark.conf["spark.ui.enabled"] == "true"
    assert cfg.windows.long_days == 90 and cfg.generator.end_date == "2024-07-02"
    with pytest.raises(ConfigError, match="caps.short_cap=5 < windows.short_count=50"):
        load_pipeline_conf(overrides=["windows.mode=count", "caps.short_cap=5"])


def test_demo_models_all_paper_variants_and_unknown_names():
    from sim.local.demo import DEMO_MODELS, resolve_models
    from sim.models import MODEL_NAMES
    assert sorted(resolve_models("paper")) == sorted(MODEL_NAMES) and "mimn" in MODEL_NAMES and "dien" in MODEL_NAMES
    every = resolve_models("all")
    assert set(MODEL_NAMES) < set(every) and "sim_soft_time_counts" in every
    assert set(DEMO_MODELS) <= set(every)
    assert resolve_models("din, sim_hard_counts") == ["din", "sim_hard_counts"]
    with pytest.raises(SystemExit, match="known experiment ids of experiments.yaml: din"):
        resolve_models("din,simm_soft")


def test_jobs_are_console_scripts_and_the_job_files_need_no_path_edits(tmp_path):
    """Every job is a console script of setup.cfg, and each jobs/ file (the spark-submit entry point)
    runs from any directory without sys.path edits or PYTHONPATH: the installed package is enough."""
    import configparser
    import os
    import subprocess
    import sys
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    scripts = dict(line.split(" = ") for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines())
    jobs = sorted(p.stem for p in (ROOT / "jobs").glob("*.py"))
    assert {f"sim-{j.replace('_', '-')}" for j in jobs} <= set(scripts)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    bin_dir = os.path.dirname(sys.executable)
    for job in jobs:
        source = (ROOT / "jobs" / f"{job}.py").read_text()
        assert "sys.path" not in source
        assert os.access(os.path.join(bin_dir, f"sim-{job.replace('_', '-')}"), os.X_OK)
        proc = subprocess.run([sys.executable, str(ROOT / "jobs" / f"{job}.py"), "--help"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "--lakehouse" in proc.stdout, (job, proc.stderr[-500:])
    proc = subprocess.run([os.path.join(bin_dir, "sim-build-ubt"), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--date" in proc.stdout, proc.stderr[-500:]


def _differences_from_defaults(parsed, prefix: str = "") -> list[str]:
    """Walk a parsed config block and the typed defaults side by side: one line per key (dotted; Spark
    conf keys one by one) whose value differs from its class's default. Fields without a default
    (required, such as the experiment's dates) are skipped; blocks are walked into."""
    from pydantic import BaseModel
    out = []
    for name, field in type(parsed).model_fields.items():
        key, value = f"{prefix}{name}", getattr(parsed, name)
        if isinstance(value, BaseModel):
            out += _differences_from_defaults(value, key + ".")
            continue
        if field.is_required():
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(value, dict) and isinstance(default, dict):
            out += [f"{key}.{k}: YAML {value.get(k)!r}, typed default {default.get(k)!r}"
                    for k in sorted(set(value) | set(default)) if value.get(k) != default.get(k)]
        elif value != default:
            out.append(f"{key}: YAML {value!r}, typed default {default!r}")
    return out


def test_yaml_values_are_the_typed_defaults():
    """One source of defaults: every value conf/pipeline.yaml and the Base block of conf/experiments.yaml
    write equals the default of the typed setting that reads it, so a config built in Python
    (benchmarks, notebooks, tests) gets what `make demo` runs with."""
    from sim.config import PipelineConfig, load_yaml
    from sim.config.experiment import ExperimentConfig
    from sim.samples.contract import SampleSpec
    pipeline = PipelineConfig.parse(load_yaml(ROOT / "conf" / "pipeline.yaml"))
    base = ExperimentConfig.parse({**load_yaml(ROOT / "conf" / "experiments.yaml")["Base"], "expid": "Base"})
    assert _differences_from_defaults(pipeline) + _differences_from_defaults(base) == []
    # The walk sees a difference where there is one.
    assert _differences_from_defaults(load_pipeline_conf(overrides=["caps.hard_k=7"])) == [
        "caps.hard_k: YAML 7, typed default 200"]
    default = PipelineConfig()
    assert SampleSpec.from_conf(default) == SampleSpec(default.windows, default.caps)


def test_default_config_passes_its_own_checks_in_count_mode():
    """The count mode of the typed defaults fits the default caps (short_count <= short_cap, long_count
    <= long_cap): a config built in Python with mode="count" and nothing else is accepted."""
    from sim.config import Caps, PipelineConfig, Windows, check_caps_fit
    from sim.samples.contract import SampleSpec
    assert check_caps_fit(Windows(mode="count"), Caps()) is None
    cfg = PipelineConfig(windows=Windows(mode="count"))
    SampleSpec.from_conf(cfg)
    assert load_pipeline_conf(overrides=["windows.mode=count"]).windows == cfg.windows


def test_settings_a_running_spark_cannot_take_are_warned_about(spark, caplog):
    """Asked for while a SparkSession runs (as under spark-submit, whose JVM is started before the job's
    code runs), a setting Spark reads only at JVM start or context creation is warned about, naming the
    key, the value in force and the spark-submit option; a runtime SQL setting is applied silently."""
    from sim.adapters.spark import get_spark
    in_force = spark.sparkContext.getConf().get("spark.driver.memory")
    parallelism = spark.sparkContext.getConf().get("spark.default.parallelism")
    asked = {"spark.driver.memory": "5g", "spark.default.parallelism": "3", "spark.sql.shuffle.partitions": "7",
             "spark.sql.warehouse.dir": "/elsewhere"}
    session_before = {k: spark.conf.get(k, None) for k in asked}  # the shared session is put back as it was
    partitions = session_before["spark.sql.shuffle.partitions"]
    try:
        with caplog.at_level("WARNING", logger="sim.adapters.spark"):
            again = get_spark("sim-tests", master="local[2]", conf=asked)
        assert again is spark and spark.conf.get("spark.sql.shuffle.partitions") == "7"
    finally:  # through the builder, as get_spark did: the session takes non-static settings that way
        from pyspark.sql import SparkSession
        SparkSession.builder.config(map=session_before).getOrCreate()
        assert {k: spark.conf.get(k, None) for k in asked} == session_before
    warned = [r.getMessage() for r in caplog.records if r.name == "sim.adapters.spark"]
    assert any(f"spark.driver.memory=5g is not applied; in force: {in_force}" in w and "--driver-memory 5g" in w
               for w in warned), warned
    assert any(f"spark.default.parallelism=3 is not applied; in force: {parallelism}" in w
               and "--conf spark.default.parallelism=3" in w for w in warned), warned
    assert any("spark.sql.warehouse.dir=/elsewhere is not applied; in force: "
               f"{session_before['spark.sql.warehouse.dir']}" in w for w in warned), warned
    assert not any("shuffle.partitions" in w or "spark.app.name" in w or "spark.master" in w for w in warned), warned
    # The settings the session runs with already are not warned about.
    caplog.clear()
    with caplog.at_level("WARNING", logger="sim.adapters.spark"):
        get_spark("another-name", master="local[2]", conf={"spark.driver.memory": in_force,
                                                          "spark.sql.shuffle.partitions": partitions})
    assert [r.getMessage() for r in caplog.records if r.name == "sim.adapters.spark"] == []


def test_spark_app_name_prefixes_each_job_name():
    """spark.app_name of conf/pipeline.yaml is the prefix of every job's Spark application name."""
    from sim.adapters.spark import app_name
    assert app_name(load_pipeline_conf(), "build_ubt") == "sim-pipeline-build_ubt"
    nightly = load_pipeline_conf(overrides=["spark.app_name=nightly"])
    assert app_name(nightly, "build_samples") == "nightly-build_samples"
