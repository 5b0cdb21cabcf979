"""The workflow recipes parse with their command's config and pass its checks (their runs are the
pipeline tests, which read these very files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from repulse.config.schema import build, check_values
from repulse.workflows.pipeline import KINDS, validate_for

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "workflows"
PIPELINES = {
    "rejection_sampling": "rejection-sampling",
    "iterative_dpo": "iterative-dpo",
    "conditional_sft": "csft",
}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipeline_recipe_parses_and_validates(name):
    kind = PIPELINES[name]
    path = RECIPES / f"{name}.yaml"
    assert f"repulse pipeline {kind} --config recipes/workflows/{name}.yaml" in path.read_text()
    # parsed as the command parses it, less the model paths: the recipes name models made by other recipes
    cfg = build(KINDS[kind].root, [str(path)], [])
    check_values(cfg)
    validate_for(kind)(cfg)
    assert cfg.pipeline.output_dir == f"runs/recipes/workflows/{name}"
    assert cfg.pipeline.policy == "runs/recipes/workflows/start_policy"


@pytest.mark.parametrize(("name", "command"), [("start_policy", "sft"), ("reward_model", "rm")])
def test_model_recipes_parse(name, command):
    from repulse.config.sections import OfflineConfig
    from repulse.trainers import rm, sft

    path = RECIPES / f"{name}.yaml"
    assert f"repulse {command} --config recipes/workflows/{name}.yaml" in path.read_text()
    cfg = build(OfflineConfig, [str(path)], [])
    check_values(cfg)
    {"sft": sft, "rm": rm}[command].validate(cfg)
    assert cfg.ckpt.output_dir == f"runs/recipes/workflows/{name}"


def test_every_workflow_recipe_is_tested():
    assert {p.stem for p in RECIPES.glob("*.yaml")} == set(PIPELINES) | {"start_policy", "reward_model"}
