"""Fixtures of the batch-workflow tests: a starting policy that is sometimes polite and sometimes rude,
and a helper that measures a model's held-out greedy reward under the toy reward model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TEMPLATE = "User: {}\nAssistant: "


RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "workflows"


def recipe(name: str, toy, paths: dict[str, str] | None = None) -> dict:
    """``recipes/workflows/<name>.yaml`` as a dict, its ``toy_assets/...`` values pointing at ``toy`` and
    the other recipes' outputs (``runs/recipes/workflows/<x>``) at ``paths[x]``."""
    import yaml

    paths = paths or {}

    def fix(value):
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, str) and value.startswith("toy_assets/"):
            return str(Path(toy.root) / value.removeprefix("toy_assets/"))
        if isinstance(value, str) and value.startswith("runs/recipes/workflows/"):
            return paths.get(value.removeprefix("runs/recipes/workflows/"), value)
        return value

    return fix(yaml.safe_load((RECIPES / f"{name}.yaml").read_text()))


@pytest.fixture(scope="session")
def start_policy(toy, tmp_path_factory):
    """``recipes/workflows/start_policy.yaml``: the toy Llama after 80 SFT steps on the toy's unpaired
    answers (half polite, half rude). Sampled, about half its answers are polite (the toy reward model
    likes those); its greedy answers are mostly rude, which leaves the workflows room to improve it."""
    import yaml

    from repulse.config.schema import build
    from repulse.config.sections import OfflineConfig
    from repulse.trainers import sft

    root = tmp_path_factory.mktemp("start_policy")
    config = recipe("start_policy", toy)
    config["ckpt"]["output_dir"] = str(root / "sft")
    (root / "sft.yaml").write_text(yaml.safe_dump(config))
    sft.run(build(OfflineConfig, [str(root / "sft.yaml")], []))
    return root / "sft"


def greedy_rewards(
    model: str | Path, prompts: Path, rm: str | Path, out: Path, template: str = TEMPLATE
) -> list[float]:
    """Greedy answers of ``model`` to the held-out ``prompts`` (rendered with ``template``), each scored
    by the reward model ``rm`` on the plain ``User: q / Assistant: a`` text it was trained on."""
    from repulse.config.sections import GenerateConfig, RewardSection
    from repulse.workflows import generate
    from repulse.workflows.inference import Scorer

    cfg = GenerateConfig()
    cfg.model.model_name_or_path = str(model)
    cfg.data.dataset = str(prompts)
    cfg.data.input_template = template
    cfg.rollout.greedy = True
    cfg.rollout.max_new_tokens = 16
    cfg.rollout.micro_batch_size = 64
    cfg.output.path = str(out)
    generate.run(cfg)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    questions = [json.loads(line)["input"] for line in Path(prompts).read_text().splitlines()]
    assert len(rows) == len(questions)
    import torch

    scorer = Scorer(RewardSection(model_name_or_path=str(rm)), torch.device("cpu"), 64)
    return scorer([TEMPLATE.format(q) for q in questions], [r["output"] for r in rows])


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.fixture(scope="session")
def workflow_recipe():
    """``recipe`` (a fixture, so test modules need not import this conftest)."""
    return recipe


@pytest.fixture(scope="session")
def greedy_eval():
    """``greedy_rewards`` (a fixture, so test modules need not import this conftest)."""
    return greedy_rewards
