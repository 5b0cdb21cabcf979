"""The config layer: defaults < YAML files (in order) < flags; errors name the flag."""

from __future__ import annotations

import subprocess
import sys

import pytest

from repulse.config import parse_config
from repulse.config.schema import leaves, to_yaml
from repulse.config.sections import OfflineConfig, RLConfig
from repulse.errors import UserError


def parse(argv, root=OfflineConfig):
    return parse_config("rl" if root is RLConfig else "sft", root, argv)


def test_flags_types_and_bare_booleans():
    cfg = parse(
        [
            "--data.max_len",
            "1024",
            "--data.apply_chat_template",
            "--adam.betas",
            "0.9",
            "0.99",
            "--engine.zero_stage=3",
        ]
    )
    assert cfg.data.max_len == 1024
    assert cfg.data.apply_chat_template is True
    assert cfg.adam.betas == [0.9, 0.99]
    assert cfg.engine.zero_stage == 3


def test_negative_numbers_are_values():
    cfg = parse(["--reward.clip_range", "-5", "5", "--algo.kl.init_coef", "-0.5"], RLConfig)
    assert cfg.reward.clip_range == [-5.0, 5.0]
    assert cfg.algo.kl.init_coef == -0.5


def test_yaml_files_merge_in_order_then_flags(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("data:\n  max_len: 100\n  input_key: q\ntrain:\n  batch_size: 4\n")
    b.write_text("data:\n  max_len: 200\n")
    cfg = parse(["--config", str(a), "--config", str(b), "--train.batch_size", "8"])
    assert (cfg.data.max_len, cfg.data.input_key, cfg.train.batch_size) == (200, "q", 8)


def test_optional_none_and_defaults_untouched():
    cfg = parse(["--data.input_template", "none"])
    assert cfg.data.input_template is None
    assert cfg.train.micro_batch_size == OfflineConfig().train.micro_batch_size


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--data.max_lenn", "3"], "--data.max_len"),
        (["--train.batch_size", "abc"], "--train.batch_size expects an integer"),
        (["--data.apply_chat_template", "maybe"], "true/false"),
        (["--train.batch_size"], "needs a value"),
        (["--adam.lr", "1", "2"], "several values"),
    ],
)
def test_bad_flags_name_the_flag(argv, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        parse(argv)


def test_yaml_unknown_key_and_bad_yaml(tmp_path):
    bad_key = tmp_path / "k.yaml"
    bad_key.write_text("data:\n  max_lenx: 3\n")
    with pytest.raises(UserError, match="unknown key 'data.max_lenx'.*data.max_len"):
        parse(["--config", str(bad_key)])
    broken = tmp_path / "b.yaml"
    broken.write_text("data: [1, 2\n")
    with pytest.raises(UserError, match="b.yaml: line"):
        parse(["--config", str(broken)])
    with pytest.raises(UserError, match="no such file"):
        parse(["--config", str(tmp_path / "missing.yaml")])


def test_dry_run_prints_resolved_config(capsys):
    assert parse(["--dry-run", "--data.max_len", "77"]) is None
    out = capsys.readouterr().out
    assert "max_len: 77" in out


def test_every_leaf_round_trips_through_yaml(tmp_path):
    cfg = RLConfig()
    path = tmp_path / "all.yaml"
    path.write_text(to_yaml(cfg))
    again = parse_config("rl", RLConfig, ["--config", str(path)])
    assert again == cfg
    assert len(leaves(RLConfig)) > 100


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "repulse", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_cli_unknown_flag_one_paragraph_no_traceback():
    proc = _cli("sft", "--data.max_lenn", "3")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "--data.max_len" in proc.stderr
    assert proc.stderr.strip().startswith("error:")


def test_cli_unknown_command():
    proc = _cli("sftt")
    assert proc.returncode == 2 and "sft" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "command, flag, value",
    [("dpo", "--model.kd_coef", "0.9"), ("rm", "--model.beta", "0.5"), ("sft", "--model.margin_loss_enable", None),
     ("kd", "--model.placeholder_token", "ки")],
)  # fmt: skip
def test_a_method_flag_given_to_another_command_is_refused(command, flag, value):
    from repulse.config import parse_config
    from repulse.config.sections import OfflineConfig
    from repulse.errors import UserError

    argv = ["--model.model_name_or_path", "m", "--data.dataset", "d", flag] + ([value] if value else [])
    with pytest.raises(
        UserError, match=f"{flag} .* is not read by repulse {command}, which would ignore it: only repulse "
    ):
        parse_config(command, OfflineConfig, argv)
    parse_config("kd" if flag == "--model.kd_coef" else "dpo" if flag == "--model.beta" else
                 "rm" if "margin" in flag else "prm", OfflineConfig, [*argv, "--dry-run"])  # fmt: skip


def test_a_flag_without_effect_warns_once(monkeypatch, capsys):
    import repulse.errors
    from repulse.config import parse_config
    from repulse.config.sections import OfflineConfig, RLConfig

    monkeypatch.setattr(repulse.errors, "_warned", set())
    argv = ["--model.model_name_or_path", "m", "--data.dataset", "d", "--engine.use_liger_kernel"]
    parse_config("sft", OfflineConfig, argv)
    parse_config("sft", OfflineConfig, argv)
    err = capsys.readouterr().err
    assert err.count("--engine.use_liger_kernel True has no effect in this version") == 1
    parse_config("rl", RLConfig, ["--vllm.num_engines", "2"])
    assert "--vllm.num_engines 2 has no effect" in capsys.readouterr().err
    parse_config("sft", OfflineConfig, argv[:4])  # nothing set: nothing said
    assert capsys.readouterr().err == ""
