"""``repulse lora-merge``: fold a LoRA adapter into its base model (OpenRLHF's ``lora_combiner``).

Flags follow the seed command: ``--model_path --lora_path --output_path [--is_rm] [--bf16]``
(``--param_dtype bf16``, or 0.10.2's ``--ds.param_dtype bf16``, is the long form of ``--bf16``).
The flags are flat and already the seed's names, so the legacy translation of the training
commands is not involved; parsing still goes through the shared schema (typed, unknown
flags named).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from repulse.errors import UserError


def _h(default, help: str):  # noqa: A002 - mirrors argparse
    return field(default=default, metadata={"help": help})


@dataclass
class LoraMergeConfig:
    model_path: str | None = _h(None, "base model directory or Hub name")
    lora_path: str | None = _h(None, "LoRA adapter directory (has adapter_config.json)")
    output_path: str | None = _h(None, "where to write the merged HF model")
    is_rm: bool = _h(False, "the adapter belongs to a reward model / critic (sequence-scalar head)")
    bf16: bool = _h(False, "save in bf16 (same as --param_dtype bf16)")
    param_dtype: str = _h("fp32", "dtype of the merged weights: fp32 | bf16 | fp16")


def main(argv: list[str]) -> int:
    from repulse.config.schema import build, help_text, split_flags, to_yaml

    if "-h" in argv or "--help" in argv:
        print(help_text(LoraMergeConfig, "lora-merge"))
        return 0
    argv = ["--param_dtype" if a == "--ds.param_dtype" else a for a in argv]
    yaml_files: list[str] = []
    flags: list[str] = []
    dry_run = False
    it = iter(argv)
    for tok in it:
        if tok in ("--dry-run", "--dry_run"):
            dry_run = True
        elif tok == "--config":
            yaml_files.append(next(it, ""))
        elif tok.startswith("--config="):
            yaml_files.append(tok.split("=", 1)[1])
        else:
            flags.append(tok)
    if "" in yaml_files:
        raise UserError("--config needs a YAML file path.")
    cfg = build(LoraMergeConfig, yaml_files, split_flags(flags))
    if dry_run:
        print(to_yaml(cfg), end="")
        return 0
    for flag in ("model_path", "lora_path", "output_path"):
        if not getattr(cfg, flag):
            raise UserError(
                f"--{flag} is required (repulse lora-merge --model_path BASE --lora_path ADAPTER --output_path OUT)."
            )
    from repulse.models.loading import merge_lora

    dtype = "bf16" if cfg.bf16 else cfg.param_dtype
    out = merge_lora(cfg.model_path, cfg.lora_path, cfg.output_path, is_rm=cfg.is_rm, dtype=dtype)
    print(f"[repulse] merged {cfg.lora_path} into {cfg.model_path}: {out}", flush=True)
    return 0
