"""Tests of the typed model configuration (sim.models.config.ModelConfig) as build_model applies it."""
from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from sim.models import ModelConfig, build_model, model_defaults  # noqa: E402
from test_models import SMALL  # noqa: E402

torch.set_num_threads(2)


@pytest.mark.parametrize("key, value, expected", [
    ("emb_dim", "abc", "valid integer"),
    ("emb_dim", 0, "greater than 0"),
    ("item_buckets", 1, "greater than or equal to 2"),
    ("mlp_dims", [16, -1], "greater than 0"),
    ("dropout", 1.0, "less than 1"),
    ("mimn_util_reg", -0.1, "greater than or equal to 0"),
    ("gsu_alpha", -1, "greater than or equal to 0"),
    ("gsu_aux_pooling", "max", "'softmax' or 'sum'"),
    ("hard_k", 0, "greater than 0"),
])
def test_invalid_config_values_are_refused_naming_the_key(key: str, value, expected: str) -> None:
    with pytest.raises(ValidationError) as err:
        build_model("sim_soft", {**SMALL, key: value})
    assert [e["loc"][0] for e in err.value.errors()] == [key]
    assert key in str(err.value) and expected in str(err.value)


def test_model_config_is_the_typed_defaults() -> None:
    config = ModelConfig(**SMALL)
    assert model_defaults() == ModelConfig().model_dump()
    assert all(f.description for f in ModelConfig.model_fields.values())
    torch.manual_seed(0)
    a = build_model("sim_soft", config)
    torch.manual_seed(0)
    b = build_model("sim_soft", SMALL)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValidationError, match="soft_k"):
        config.soft_k = 0
    # The experiment configuration may embed ModelConfig without loading torch.
    code = "import sys, sim.models.config, sim.models; assert 'torch' not in sys.modules, 'torch'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
