"""params.yaml must be exactly what conf/ composes (what `dvc exp run` would write), and dvc.yaml's
stages must match the code (names, the params each stage declares)."""

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import compose
from edgeasr import STAGES
from edgeasr.config import compose_params
from edgeasr.stages.params import STAGE_PARAMS, logged_params

REPO = Path(__file__).resolve().parents[1]


def test_params_yaml_equals_composed_conf():
    committed = (REPO / "params.yaml").read_text(encoding="utf-8")
    assert committed == compose_params(root=REPO), "params.yaml is stale: run `edgeasr-params` and commit it"


def test_tiny_experiment_is_a_diff_that_shrinks_data():
    default = yaml.safe_load(compose_params(root=REPO))
    tiny = yaml.safe_load(compose_params(["experiment=tiny"], root=REPO))
    assert tiny["seed"] == default["seed"]
    for split, spec in default["data"]["splits"].items():
        assert tiny["data"]["splits"][split]["hours"] < spec["hours"]


def test_each_dvc_stage_has_one_name_everywhere():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert "--config-name params" in dvc["vars"][0]["hydra_args"]
    assert list(dvc["stages"]) == [s for s in STAGES if s in dvc["stages"]], "stages out of pipeline order"
    for stage, spec in dvc["stages"].items():
        assert stage in STAGES
        assert (REPO / "pipelines" / f"{stage}.py").is_file()
        assert spec["cmd"] == f"python pipelines/{stage}.py ${{hydra_args}}"
        assert stage in params, f"no config section {stage!r}"
        assert stage in spec["params"]
        assert spec["metrics"] == [f"reports/{stage}.json"]  # cached: `dvc push` ships it with the model


def test_dvc_params_lists_are_the_declared_stage_params():
    """Each stage's params are declared once (edgeasr.stages.params); dvc.yaml's lists must match."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert set(STAGE_PARAMS) == set(STAGES) == set(dvc["stages"])
    for stage, spec in dvc["stages"].items():
        assert tuple(spec["params"]) == STAGE_PARAMS[stage], f"dvc.yaml's params of {stage!r}"


def test_logged_params_select_the_declared_keys():
    cfg = compose(["experiment=tiny"])
    teacher = logged_params("train_teacher", cfg)
    assert set(teacher) == {"seed", "model", "trainer", "hw", "train_teacher", "context_lists"} and list(teacher["model"]) == ["teacher"]
    assert teacher["model"]["teacher"]["encoder"]["d_model"] == 64
    assert logged_params("reference", cfg)["data"] == {"text_normalization": "basic"}
    assert set(logged_params("prepare", cfg)) == {"seed", "data", "prepare"}  # paths.data_dir is not logged
    with pytest.raises(KeyError, match="'data.text_normalization'"):
        logged_params("reference", OmegaConf.create({"seed": 1, "reference": {}}))
    with pytest.raises(KeyError, match="declares no params"):
        logged_params("nonesuch", cfg)
