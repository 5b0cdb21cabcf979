"""Padding-free RL forwards (``--engine.packing_samples`` in ``repulse rl``).

The samples here are ragged on purpose - prompts of 2 to 6 tokens, responses that stop after 1
to 8 - so a padded batch is mostly padding and packing changes its shape; the packed forward
must still give the padded forward's log-probs and values (1e-5), and a whole RL run the same
metrics and weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

PROMPTS = [[1, 40, 41, 42, 43, 44], [1, 50], [1, 60, 61, 62]]


def _samples(toy, pack: bool):
    from repulse.models.loading import disable_dropout, load_causal_lm
    from repulse.rl.rollout import hf_generate

    torch.manual_seed(3)
    model = disable_dropout(load_causal_lm(str(toy.llama), trainable=False))
    s = hf_generate(
        model, PROMPTS, n_samples=2, max_new_tokens=8, temperature=1.0, top_p=1.0, top_k=0, eos_id=2,
        pad_id=0, micro_batch_size=64, device=torch.device("cpu"),
    )  # fmt: skip
    # ragged responses: as if EOS had come after these many tokens
    lengths = torch.tensor([8, 1, 5, 3, 2, 7])
    s.action_mask = (torch.arange(s.action_mask.shape[1])[None] < lengths[:, None]).long()
    s.attention_mask = torch.cat([s.attention_mask[:, : s.prompt_len], s.action_mask], 1)
    s.pack = pack
    return model, s


def test_packed_layout_removes_the_padding(toy):
    from repulse.rl.packing import pack_rows, unpack

    _, s = _samples(toy, True)
    layout = pack_rows(s.sequences, s.attention_mask, capacity=0)
    real = int(s.attention_mask.sum())
    assert layout.input_ids.numel() < s.sequences.numel()  # the padded batch: 6 rows x 14
    assert layout.input_ids.shape[0] < s.sequences.shape[0]  # several samples share a row
    assert layout.row.numel() == real
    back = unpack(layout.input_ids[..., None], layout)[..., 0]
    assert torch.equal(back * s.attention_mask, s.sequences * s.attention_mask)
    # positions restart at 0 for every sample
    starts = (layout.position_ids[layout.row, layout.col] == 0).sum()
    assert int(starts) == s.sequences.shape[0]


def test_packed_logprobs_equal_padded(toy):
    from repulse.rl.experience import action_logprobs

    model, packed = _samples(toy, True)
    _, padded = _samples(toy, False)
    lp_packed, ent_packed = action_logprobs(model, packed, 0.7, with_entropy=True)
    lp_padded, ent_padded = action_logprobs(model, padded, 0.7, with_entropy=True)
    assert (lp_padded != 0).sum() == padded.action_mask.sum()
    torch.testing.assert_close(lp_packed, lp_padded, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent_packed, ent_padded, atol=1e-5, rtol=1e-5)


def test_packed_values_equal_padded(toy):
    from repulse.models.loading import load_scalar_model, token_values
    from repulse.rl.experience import sample_values

    _, packed = _samples(toy, True)
    _, padded = _samples(toy, False)
    critic = load_scalar_model(str(toy.llama), value_head_prefix="score", pad_token_id=0)
    v_packed = sample_values(critic, packed, token_values)
    v_padded = sample_values(critic, padded, token_values)
    m = padded.attention_mask.bool()
    torch.testing.assert_close(v_packed[m], v_padded[m], atol=1e-5, rtol=1e-5)


def _run(toy, tmp_path: Path, pack: bool, extra: list[str]) -> tuple[list[dict], dict, int]:
    """The run's metrics rows, its final weights, and the token positions its forwards with
    gradients computed (real tokens plus padding)."""
    from safetensors.torch import load_file

    from repulse.config import parse_config
    from repulse.config.sections import RLConfig
    from repulse.trainers.rl import run, validate

    funcs = Path(__file__).parents[1] / "trainers" / "rl_reward_funcs.py"
    out = tmp_path / ("packed" if pack else "padded")
    # ragged prompts (every other one three times as long, the rest two words), so that a padded
    # batch is mostly padding and packed rows hold several samples
    prompts = tmp_path / "ragged_prompts.jsonl"
    rows = [json.loads(line) for line in toy.prompts.read_text().splitlines()]
    prompts.write_text("".join(
        json.dumps({**r, "input": " ".join([r["input"]] * 3) if i % 2 else " ".join(r["input"].split()[:2])}) + "\n"
        for i, r in enumerate(rows)
    ))  # fmt: skip
    argv = [
        "--actor.model_name_or_path", str(toy.llama), "--data.prompt_dataset", str(prompts),
        "--reward.remote_url", str(funcs), "--rollout.batch_size", "4", "--rollout.n_samples_per_prompt", "2",
        "--rollout.max_new_tokens", "8", "--train.micro_batch_size", "4",
        "--train.max_steps", "2", "--actor.adam.lr", "1e-2", "--logger.progress_bar", "false",
        "--ckpt.output_dir", str(out), *extra,
    ]  # fmt: skip
    if pack:
        argv.append("--engine.packing_samples")
    positions = []

    def count(module: torch.nn.Module, args: tuple, _out: object) -> None:
        if isinstance(module, torch.nn.Embedding) and torch.is_grad_enabled() and args[0].dim() == 2:
            positions.append(args[0].numel())

    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        assert run(parse_config("rl", RLConfig, argv, validate)) == 0
    finally:
        handle.remove()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, load_file(out / "model.safetensors"), sum(positions)


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        # policy, reference (KL in the reward) and critic forwards
        [
            "--algo.advantage.estimator",
            "gae",
            "--algo.kl.init_coef",
            "0.05",
            "--critic.adam.lr",
            "1e-3",
            "--train.batch_size",
            "8",
        ],
        # policy and the proposal q (RePULSe)
        [
            "--repulse.method",
            "repulse",
            "--algo.kl.init_coef",
            "0.02",
            "--repulse.beta",
            "2",
            "--repulse.alpha",
            "0.5",
        ],
    ],
    ids=["ppo_ref_critic", "repulse_proposal"],
)
def test_packed_rl_run_equals_padded(toy, tmp_path, extra):
    padded, w_padded, padded_positions = _run(toy, tmp_path, False, extra)
    packed, w_packed, packed_positions = _run(toy, tmp_path, True, extra)
    # the flag took effect: the training forwards computed fewer positions (no padding)
    assert packed_positions < 0.9 * padded_positions, (packed_positions, padded_positions)
    for a, b in zip(padded, packed):
        for k, v in a.items():
            if k.startswith("time") or k in ("samples_per_s", "step"):
                continue
            assert math.isclose(v, b[k], rel_tol=1e-4, abs_tol=1e-5), (k, v, b[k])
    for k in w_padded:
        # Adam at lr 1e-2 moves a weight whose gradient is rounding noise by up to lr a step: a few such
        # entries differ by ~2e-5 after 2 steps (measured); wrong positions or masks move thousands by ~lr
        torch.testing.assert_close(w_packed[k], w_padded[k], atol=1e-4, rtol=1e-4)
