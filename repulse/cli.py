"""The ``repulse`` command: one sub-command per trainer or workflow.

Bad input raises ``UserError`` anywhere below; here it becomes one paragraph on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap

# sub-command -> "module:function"; each function takes argv and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "sft": ("repulse.trainers.sft:main", "supervised fine-tuning (incl. pretrain mode, multi-turn)"),
    "rm": ("repulse.trainers.rm:main", "reward model (Bradley-Terry / log-exp, margin)"),
    "prm": ("repulse.trainers.prm:main", "process reward model (Math-Shepherd)"),
    "dpo": ("repulse.trainers.dpo:main", "DPO / IPO / cDPO"),
    "kto": ("repulse.trainers.kto:main", "KTO on unpaired data"),
    "kd": ("repulse.trainers.kd:main", "knowledge distillation"),
    "rl": ("repulse.launch.rl:main", "PPO, REINFORCE++, RLOO, GRPO, Dr. GRPO and RePULSe"),
    "serve-rm": ("repulse.rl.reward_server:main", "serve a reward model over HTTP"),
    "eval-tail": ("repulse.workflows.eval_tail:main", "tail-risk evaluation: P(r < eta), CVaR, exact, IS"),
    "gcg": ("repulse.workflows.gcg:main", "GCG adversarial attack: suffixes, samples, attack success"),
    "plot": ("repulse.report.cli:plot_main", "training curves and reward-vs-risk frontiers"),
    "toy": ("repulse.toy.cli:main", "build the tiny local tokenizer, models and data sets"),
    "lora-merge": ("repulse.models.merge_cli:main", "merge a LoRA adapter into its base model"),
    "demo": ("repulse.workflows.demo:main", "the RePULSe toy experiment end to end"),
    "generate": ("repulse.workflows.generate:main", "batch generation: n responses per prompt to a jsonl"),
    "score": ("repulse.workflows.score:main", "reward a jsonl; rs / iter_dpo / csft post-processing"),
    "pipeline": (
        "repulse.workflows.pipeline:main",
        "rejection-sampling | iterative-dpo | csft as one resumable command",
    ),
    "chat": ("repulse.workflows.chat:main", "interactive chat with a model (and its reward)"),
}


def _usage() -> str:
    rows = "\n".join(f"  {name:<10} {desc}" for name, (_, desc) in COMMANDS.items())
    return f"usage: repulse <command> [options]   (repulse <command> --help)\n\ncommands:\n{rows}\n"


def _print_error(message: str) -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        return
    text = " ".join(str(message).split())
    wrapped = textwrap.fill(f"error: {text}", width=100, break_on_hyphens=False, break_long_words=False)
    print(wrapped, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from repulse.errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0 if argv else 2
    if argv[0] in {"--version", "version"}:
        from repulse import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        from repulse.config.schema import suggest

        _print_error(f"unknown command '{name}'.{suggest(name, COMMANDS).replace('--', '')}\n{_usage()}")
        return 2
    target, _ = COMMANDS[name]
    module, func = target.split(":")
    try:
        status = int(getattr(importlib.import_module(module), func)(rest) or 0)
    except UserError as exc:
        _print_error(str(exc))
        _leave_process_group()
        return 2
    except KeyboardInterrupt:
        _print_error("interrupted; finished checkpoints are kept.")
        return 130
    _leave_process_group()
    return status


def _leave_process_group() -> None:
    """A command that joined a torch.distributed group (finished, or refused with a paragraph)
    tears the group down before the interpreter exits: left to the exit, gloo's threads can be
    destroyed while still joinable, which aborts the process (SIGABRT, "terminate called without
    an active exception") after its work is done. With vLLM loaded the group is left alone: the
    engines' shutdown at exit tears it down with their own groups, and fails on one destroyed
    before it."""
    if "torch.distributed" in sys.modules and "vllm" not in sys.modules:
        import gc

        from repulse.engine.dist import destroy

        # first free what the finished run left unreachable but alive in reference cycles (FSDP's
        # parameter groups hold their process group): the groups then die in destroy(), not in
        # the interpreter's teardown
        gc.collect()
        destroy()


if __name__ == "__main__":
    raise SystemExit(main())
