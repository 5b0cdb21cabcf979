"""Every ``openrlhf.cli.batch_inference`` command of the seed documents runs, through the flag translation.

The commands are copied verbatim from ``shared/seeds/openrlhf-non-rl-methods.rst`` (heredoc bodies,
missing line continuations included). Hub names and shell variables become toy assets; two sizes the
toy cannot take are shrunk (``--max_new_tokens 2048``: the toy model reads 512 positions; ``--tp_size
4``: one CPU process), and ``--rollout_batch_size`` counts 16 toy prompts. ``--eval_task
generate_vllm`` needs vLLM: without it the command stops with the one paragraph that says how to get
it; with it (the vLLM venv) the commands generate.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from repulse.cli import main as cli
from repulse.config.legacy import split_launcher

_spec = importlib.util.spec_from_file_location(
    "legacy_tests", Path(__file__).resolve().parents[1] / "config" / "test_legacy.py"
)
_legacy_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_legacy_tests)  # type: ignore[union-attr]
shell_split = _legacy_tests.shell_split

# name -> (verbatim text, openrlhf-non-rl-methods.rst line)
SEED_BATCH_INFERENCE = {
    "rejection_sampling_generate": (
        r"""openrlhf.cli.batch_inference \
   --eval_task generate_vllm \
   --pretrain $POLICY_MODEL_PATH \
   --bf16 \
   --max_new_tokens 2048 \
   --prompt_max_len 2048 \
   --dataset OpenRLHF/prompt-collection-v0.1 \
   --input_key context_messages \
   --apply_chat_template \
   --temperature 0.9
   --best_of_n 4 \
   --enable_prefix_caching \
   --tp_size 4 \
   --micro_batch_size 64 \
   --iter $iter \
   --rollout_batch_size $ROLLOUT_BATCH_SIZE \
   --output_path $GENERATE_OUTPUT""",
        203,
    ),
    "rejection_sampling_rm": (
        r"""openrlhf.cli.batch_inference \
   --eval_task rm \
   --pretrain OpenRLHF/Llama-3-8b-rm-mixture \
   --bf16 \
   --max_len 2048 \
   --dataset $GENERATE_OUTPUT  \
   --dataset_probs 1.0 \
   --zero_stage 0 \
   --post_processor rs \
   --micro_batch_size 4 \
   --output_path $RM_OUTPUT""",
        226,
    ),
    "iterative_dpo_generate": (
        r"""openrlhf.cli.batch_inference \
   --eval_task generate_vllm \
   --pretrain $POLICY_MODEL_PATH \
   --max_new_tokens 2048 \
   --prompt_max_len 2048 \
   --dataset OpenRLHF/prompt-collection-v0.1 \
   --input_key context_messages \
   --apply_chat_template \
   --temperature 1.0 \
   --tp_size 4 \
   --best_of_n 16 \
   --enable_prefix_caching \
   --max_num_seqs 64 \
   --iter $iter \
   --rollout_batch_size $ROLLOUT_BATCH_SIZE \
   --output_path $GENERATE_OUTPUT""",
        329,
    ),
    "iterative_dpo_rm": (
        r"""openrlhf.cli.batch_inference \
   --eval_task rm \
   --pretrain OpenRLHF/Llama-3-8b-rm-mixture \
   --bf16 \
   --max_len 4096 \
   --dataset $GENERATE_OUTPUT  \
   --dataset_probs 1.0 \
   --zero_stage 0 \
   --post_processor iter_dpo \
   --micro_batch_size 4 \
   --output_path $RM_OUTPUT""",
        351,
    ),
    "conditional_sft_rm": (
        r"""openrlhf.cli.batch_inference \
   --eval_task rm \
   --pretrain OpenRLHF/Llama-3-8b-rm-mixture \
   --bf16 \
   --max_len 4096 \
   --dataset OpenRLHF/preference_dataset_mixture2_and_safe_pku \
   --input_key chosen \
   --apply_chat_template \
   --max_samples 128000 \
   --zero_stage 0 \
   --post_processor csft \
   --normalize_reward
   --micro_batch_size 4 \
   --output_path $RM_OUTPUT""",
        412,
    ),
}


@pytest.fixture(scope="module")
def toy_inputs(toy, tmp_path_factory) -> dict[str, Path]:
    """The toy stand-ins of the seed's Hub data: chat prompts under 'context_messages', and
    preference rows whose 'chosen' is a conversation."""
    root = tmp_path_factory.mktemp("seed_inputs")
    prompts = [json.loads(line) for line in Path(toy.prompts).read_text().splitlines()]
    pairs = [json.loads(line) for line in Path(toy.pairs).read_text().splitlines()][:24]
    chat_prompts = root / "prompt_collection.jsonl"
    chat_prompts.write_text(
        "".join(
            json.dumps({"context_messages": [{"role": "user", "content": p["input"]}]}) + "\n"
            for p in prompts
        )
    )
    prefs = root / "preference_mixture.jsonl"
    prefs.write_text(
        "".join(
            json.dumps(
                {
                    "chosen": [
                        {"role": "user", "content": p["prompt"]},
                        {"role": "assistant", "content": p["chosen"]},
                    ]
                }
            )
            + "\n"
            for p in pairs
        )
    )
    return {"prompts": chat_prompts, "prefs": prefs}


def _argv(name: str, subs: dict[str, str]) -> tuple[str, list[str]]:
    text, _ = SEED_BATCH_INFERENCE[name]
    for old, new in subs.items():
        text = text.replace(old, new)
    return split_launcher(shell_split(text))


def _subs(toy, toy_rm, inputs: dict[str, Path], tmp: Path, generated: Path) -> dict[str, str]:
    return {
        "$POLICY_MODEL_PATH": str(toy.llama),
        "OpenRLHF/prompt-collection-v0.1": str(inputs["prompts"]),
        "OpenRLHF/Llama-3-8b-rm-mixture": str(toy_rm),
        "OpenRLHF/preference_dataset_mixture2_and_safe_pku": str(inputs["prefs"]),
        "$GENERATE_OUTPUT": str(generated),
        "$RM_OUTPUT": str(tmp / "rm.jsonl"),
        "$iter": "0",
        "$ROLLOUT_BATCH_SIZE": "16",
        "--max_new_tokens 2048": "--max_new_tokens 32",
        "--tp_size 4": "--tp_size 1",
    }


def _generated(toy, tmp: Path, n: int) -> Path:
    """What the generate step leaves for the rm step: 16 toy prompts x n responses (hf backend)."""
    out = tmp / "generate.jsonl"
    argv = ["generate", "--pretrain", str(toy.llama), "--dataset", str(toy.prompts), "--rollout_batch_size", "16",
            "--best_of_n", str(n), "--max_new_tokens", "16", "--temperature", "1.0", "--output_path", str(out)]  # fmt: skip
    assert cli(argv) == 0
    return out


@pytest.mark.parametrize(
    ("name", "post"),
    [("rejection_sampling_rm", "rs"), ("iterative_dpo_rm", "iter_dpo"), ("conditional_sft_rm", "csft")],
)
def test_seed_rm_commands_run(name, post, toy, toy_rm, toy_inputs, tmp_path):
    generated = _generated(toy, tmp_path, 4) if name != "conditional_sft_rm" else tmp_path / "unused"
    command, argv = _argv(name, _subs(toy, toy_rm, toy_inputs, tmp_path, generated))
    assert command == "score"
    assert cli([command, *argv]) == 0
    rows = [json.loads(line) for line in (tmp_path / "rm.jsonl").read_text().splitlines()]
    if post == "rs":
        assert len(rows) == len({r["input"] for r in rows}) <= 16 and all("reward" in r for r in rows)
    elif post == "iter_dpo":
        assert rows and all(r["chosen_reward"] >= r["rejected_reward"] for r in rows)
    else:
        assert len(rows) == 24 and all(" <rm_score>: " in r["input"] for r in rows)
        assert abs(sum(r["reward"] for r in rows)) < 1e-6  # --normalize_reward: mean 0


def _has_vllm() -> bool:
    return importlib.util.find_spec("vllm") is not None


@pytest.mark.parametrize("name", ["rejection_sampling_generate", "iterative_dpo_generate"])
def test_seed_generate_commands_need_vllm_and_say_so(name, toy, toy_rm, toy_inputs, tmp_path, capsys):
    if _has_vllm():
        pytest.skip("vLLM is installed here: test_seed_generate_commands_run_on_vllm runs them")
    command, argv = _argv(name, _subs(toy, toy_rm, toy_inputs, tmp_path, tmp_path / "gen.jsonl"))
    assert command == "generate"
    assert cli([command, *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error: ") == 1
    assert "vllm" in err.lower() and "install" in err.lower()  # how to get it, not a flag complaint


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize(("name", "n"), [("rejection_sampling_generate", 4), ("iterative_dpo_generate", 16)])
def test_seed_generate_commands_run_on_vllm(name, n, toy, toy_rm, toy_inputs, tmp_path):
    if not _has_vllm():
        pytest.skip("needs vLLM (the .venv-vllm environment)")
    out = tmp_path / "gen.jsonl"
    command, argv = _argv(name, _subs(toy, toy_rm, toy_inputs, tmp_path, out))
    assert cli([command, *argv]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 16 * n and rows[0]["input"].startswith("<s><|user|>")
