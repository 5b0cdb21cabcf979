"""Run one TRL trainer on a benchmark workload, with the same clock as ``repulse_worker.py``.

Usage: ``python bench/trl_worker.py KIND '<workload json>'`` with KIND in
``sft | reward | dpo | grpo | rloo``. The workload is the dict the driver also turns into
repulse flags, so both sides read the same numbers.

Parity choices (each one is a TRL default we override, and why):

- ``bf16=False``, the model loaded in fp32 by us: TRL defaults to bf16 mixed precision, which on
  CPU would compare a different arithmetic; repulse runs fp32 on CPU.
- ``gradient_checkpointing=False``: TRL defaults it on; repulse defaults it off.
- ``attn_implementation="sdpa"``: repulse's default.
- Data is **pre-tokenized with repulse's own dataset classes** (SFT: ``input_ids`` +
  ``completion_mask``; RM: ``chosen_ids``/``rejected_ids``; DPO: ``prompt_ids`` + completions),
  so both sides train on identical token sequences and loss masks. TRL's SFT and Reward trainers
  accept tokenized datasets and skip their own tokenization; its DPOTrainer always re-tokenizes
  strings, so a subclass skips ``_prepare_dataset`` for our tokenized columns (data preparation
  only, before the timed window).
- ``beta=0`` for GRPO and RLOO (no reference model), as ``--algo.kl.init_coef 0`` on our side;
  or the workload's ``kl_coef`` (GRPO's KL term is k3 in the loss, as
  ``--algo.kl.use_loss --algo.kl.estimator k3`` on our side).
- ``logging_steps=1``: repulse writes metrics every step by default; TRL then logs every step too.
- ``save_strategy="no"``, ``report_to="none"``, ``disable_tqdm=True``: no I/O inside the timed window.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import StepClock, write_trial_result  # noqa: E402


def _clock_callback(clock: StepClock):
    from transformers import TrainerCallback

    class ClockCallback(TrainerCallback):
        """Optimizer-step timestamps (``on_step_end`` fires once per optimizer step, after it)."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
            if model is not None:
                clock.pad_id = getattr(model.config, "pad_token_id", None)
                clock.count_tokens_of(model)

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            clock.mark_step()

    return ClockCallback()


def _common_args(w: dict[str, Any], out_dir: str) -> dict[str, Any]:
    accum = w["batch_size"] // w["micro_batch_size"]
    return dict(
        output_dir=out_dir,
        max_steps=w["warmup"] + w["steps"],
        per_device_train_batch_size=w["micro_batch_size"],
        gradient_accumulation_steps=accum,
        learning_rate=w["lr"],
        max_grad_norm=1.0,
        seed=w["seed"],
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        dataloader_num_workers=0,
    )


def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _causal_lm(path: str):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")


def _rows(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _data_section(w: dict[str, Any]):
    from repulse.config.sections import DataSection

    return DataSection(**w.get("data_section", {}))


def run_sft(w: dict[str, Any], clock: StepClock, out_dir: str) -> Any:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from repulse.data.sft import SFTDataset

    tok = _tokenizer(w["model"])
    items = SFTDataset(_rows(w["data"]), tok, _data_section(w))
    ds = Dataset.from_list(
        [{"input_ids": it["input_ids"], "completion_mask": it["loss_mask"]} for it in items.items]
    )
    args = SFTConfig(
        **_common_args(w, out_dir),
        max_length=w["max_len"],
        packing=bool(w["packing"]),
        packing_strategy="bfd",
        completion_only_loss=True,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(
        model=_causal_lm(w["model"]),
        args=args,
        train_dataset=ds,
        processing_class=tok,
        callbacks=[_clock_callback(clock)],
    )
    trainer.train()
    return trainer


def _pairs(w: dict[str, Any]):
    from repulse.data.preference import PreferenceDataset

    tok = _tokenizer(w["model"])
    return tok, PreferenceDataset(_rows(w["data"]), tok, _data_section(w)).items


def run_reward(w: dict[str, Any], clock: StepClock, out_dir: str) -> Any:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    tok, items = _pairs(w)
    ds = Dataset.from_list(
        [{"chosen_ids": it["chosen_ids"], "rejected_ids": it["rejected_ids"]} for it in items]
    )
    model = AutoModelForSequenceClassification.from_pretrained(
        w["model"], num_labels=1, dtype=torch.float32, attn_implementation="sdpa"
    )
    model.config.pad_token_id = tok.pad_token_id
    args = RewardConfig(**_common_args(w, out_dir), max_length=w["max_len"])
    trainer = RewardTrainer(
        model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[_clock_callback(clock)]
    )
    trainer.train()
    return trainer


def run_dpo(w: dict[str, Any], clock: StepClock, out_dir: str) -> Any:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tok, items = _pairs(w)
    rows = []
    for it in items:
        # repulse masks mark response tokens; the prompt is the unmasked prefix (shared by both).
        p = it["chosen_mask"].index(1) if 1 in it["chosen_mask"] else len(it["chosen_mask"])
        rows.append(
            {
                "prompt_ids": it["chosen_ids"][:p],
                "chosen_ids": it["chosen_ids"][p:],
                "rejected_ids": it["rejected_ids"][p:],
            }
        )
    args = DPOConfig(
        **_common_args(w, out_dir),
        max_length=w["max_len"],
        beta=w["beta"],
        padding_free=bool(w.get("packing", False)),
    )

    class TokenizedDPOTrainer(DPOTrainer):
        """DPOTrainer that accepts our pre-tokenized pairs (TRL 1.16 always re-tokenizes strings).

        Only data preparation (before training, untimed) is skipped; everything TRL does per
        step is TRL's own code.
        """

        def _prepare_dataset(self, dataset, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names):
                return dataset
            return super()._prepare_dataset(dataset, *args, **kwargs)

    trainer = TokenizedDPOTrainer(
        model=_causal_lm(w["model"]),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        callbacks=[_clock_callback(clock)],
    )
    trainer.train()
    return trainer


def count_label_reward(completions: list[Any], label: list[str], **_: Any) -> list[float]:
    """The RL benches' programmatic reward: occurrences of the prompt's target word."""
    return [float(str(c).count(str(lab))) for c, lab in zip(completions, label)]


def _rl(w: dict[str, Any], clock: StepClock, out_dir: str, kind: str) -> Any:
    from datasets import Dataset

    clock.disable_token_counting()
    tok = _tokenizer(w["model"])
    ds = Dataset.from_list([{"prompt": r["input"], "label": r["label"]} for r in _rows(w["data"])])
    micro = w["micro_batch_size"]
    common = _common_args(w, out_dir)
    common.update(
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=w["batch_size"] // micro,
    )
    rl_args = dict(
        num_generations=w["n_samples"],
        max_completion_length=w["max_new_tokens"],
        temperature=w["temperature"],
        top_p=1.0,
        beta=float(w.get("kl_coef", 0.0)),
        num_iterations=1,
    )
    if kind == "grpo":
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer
    args = Config(**common, **rl_args)
    tok.padding_side = "left"
    trainer = Trainer(
        model=_causal_lm(w["model"]),
        reward_funcs=count_label_reward,
        args=args,
        train_dataset=ds,
        processing_class=tok,
        callbacks=[_clock_callback(clock)],
    )
    trainer.train()
    return trainer


# Logged quantities that tell whether both sides did the same work (e.g. completion length in RL).
KEYS = {"loss": "loss", "completions/mean_length": "response_length", "reward": "reward"}


def logged_means(trainer: Any) -> dict[str, float]:
    """Means of a few per-step metrics from the trainer's log history, named as on our side."""
    means = {}
    for key, name in KEYS.items():
        vals = [float(h[key]) for h in trainer.state.log_history if isinstance(h.get(key), (int, float))]
        if vals:
            means[f"mean_{name}"] = sum(vals) / len(vals)
    return means


KINDS = {
    "sft": run_sft,
    "reward": run_reward,
    "dpo": run_dpo,
    "grpo": lambda w, c, o: _rl(w, c, o, "grpo"),
    "rloo": lambda w, c, o: _rl(w, c, o, "rloo"),
}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in KINDS:
        print(f"usage: trl_worker.py {{{'|'.join(KINDS)}}} '<workload json>'", file=sys.stderr)
        return 2
    kind, workload = argv[0], json.loads(argv[1])
    import torch

    torch.manual_seed(workload["seed"])
    clock = StepClock()
    out_dir = workload.get("output_dir") or os.path.join(os.environ.get("TMPDIR", "/tmp"), f"trl_{kind}")
    trainer = KINDS[kind](workload, clock, out_dir)
    write_trial_result(clock.result(extra={"kind": kind, **logged_means(trainer)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
