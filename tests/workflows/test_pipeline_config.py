"""``repulse pipeline`` refuses, at parse time or before any stage runs, what it could not honour."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from repulse.cli import main as cli
from repulse.config.schema import build
from repulse.errors import UserError
from repulse.workflows.pipeline import KINDS, Pipeline, refuse_owned, stage_configs


def _error(capsys, argv: list[str]) -> str:
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error: ") == 1, err
    return " ".join(err[err.index("error: ") :].split())


@pytest.fixture
def rs_config(toy, tmp_path, workflow_recipe) -> Path:
    config = workflow_recipe(
        "rejection_sampling", toy, {"start_policy": str(toy.llama), "reward_model": str(toy.llama)}
    )
    config["pipeline"]["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "rs.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (
            ["--sft.data.dataset", "x.jsonl"],
            "--sft.data.dataset is set by the pipeline (the score stage's output)",
        ),
        (["--generate.model.model_name_or_path", "m"], "--pipeline.policy"),
        (["--generate.reward.model_name_or_path", "rm"], "the score stage (--score.reward.*)"),
        (["--score.score.post_processor", "csft"], "the pipeline kind"),
        (["--sft.ckpt.load_enable"], "resumes from its last checkpoint"),
        (["--pipeline.reference", "ref"], "used by repulse pipeline iterative-dpo only"),
        (["--dpo.model.beta", "0.2"], "unknown option --dpo.model.beta"),
        (["--generate.rollout.top_p", "2"], "--generate.rollout.top_p must be > 0 and <= 1"),
        (["--sft.model.beta", "0.2"], "--sft.model.beta 0.2 is not read by repulse sft"),
    ],
)
def test_options_the_pipeline_sets_or_cannot_use_are_refused(rs_config, capsys, flags, needle):
    assert needle in _error(capsys, ["pipeline", "rejection-sampling", "--config", str(rs_config), *flags])


def test_csft_runs_once_and_an_unknown_kind_is_named(toy, tmp_path, capsys, workflow_recipe):
    config = workflow_recipe(
        "conditional_sft", toy, {"start_policy": str(toy.llama), "reward_model": str(toy.llama)}
    )
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert "--pipeline.iterations must be 1" in _error(
        capsys, ["pipeline", "csft", "--config", str(path), "--pipeline.iterations", "2"]
    )
    assert "unknown pipeline 'raft'" in _error(capsys, ["pipeline", "raft"])


def test_iterations_beyond_the_prompts_fail_before_any_stage(rs_config, tmp_path, capsys):
    # 400 toy prompts, 48 per iteration: iteration 8 would start at prompt 384, iteration 9 at 432
    msg = _error(
        capsys, ["pipeline", "rejection-sampling", "--config", str(rs_config), "--pipeline.iterations", "10"]
    )
    assert "iteration 9 has no prompts" in msg and "--generate.data.rollout_batch_size 48" in msg
    assert not (tmp_path / "run" / "iter_0").exists()


def test_stages_are_connected_by_the_pipeline(rs_config):
    cfg = build(KINDS["rejection-sampling"].root, [str(rs_config)], [])
    refuse_owned(cfg, "rejection-sampling")
    out = Path(cfg.pipeline.output_dir)
    stages = stage_configs(cfg, "rejection-sampling", 1, str(out / "iter_0" / "model"))
    assert stages["generate"].model.model_name_or_path == str(out / "iter_0" / "model")
    assert stages["generate"].data.iter == 1
    assert (
        stages["score"].data.dataset
        == stages["generate"].output.path
        == str(out / "iter_1" / "generate.jsonl")
    )
    assert stages["score"].score.post_processor == "rs"
    assert stages["sft"].data.dataset == stages["score"].output.path == str(out / "iter_1" / "rs.jsonl")
    assert stages["sft"].ckpt.output_dir == str(out / "iter_1" / "model")
    assert (stages["sft"].data.input_key, stages["sft"].data.output_key) == ("input", "output")
    assert stages["sft"].data.input_template is None
    # a new stage starts over; a killed one with a finished checkpoint resumes from it
    assert (stages["sft"].ckpt.load_enable, stages["sft"].ckpt.overwrite) == (False, True)
    step = out / "iter_1" / "model" / "checkpoints" / "step_2"
    step.mkdir(parents=True)
    (step / "trainer.json").write_text('{"step": 2}')
    again = stage_configs(cfg, "rejection-sampling", 1, str(out / "iter_0" / "model"))["sft"]
    assert (again.ckpt.load_enable, again.ckpt.overwrite) == (True, False)


def test_a_changed_config_is_refused_but_more_iterations_are_not(rs_config):
    cfg = build(KINDS["rejection-sampling"].root, [str(rs_config)], [])
    Pipeline(cfg, "rejection-sampling", 0).check_config()
    more = build(KINDS["rejection-sampling"].root, [str(rs_config)], [("pipeline.iterations", ["3"])])
    Pipeline(more, "rejection-sampling", 0).check_config()
    other = build(KINDS["rejection-sampling"].root, [str(rs_config)], [])
    other.generate.rollout.temperature = 0.7
    with pytest.raises(UserError, match=r"another configuration: --generate.rollout.temperature 1.0 -> 0.7"):
        Pipeline(other, "rejection-sampling", 0).check_config()
    with pytest.raises(UserError, match="holds a 'rejection-sampling' pipeline, not 'iterative-dpo'"):
        Pipeline(cfg, "iterative-dpo", 0).check_config()
