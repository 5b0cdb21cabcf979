"""Every shell command in README.md runs as written, in the order a reader meets it.

The commands are read from the README's ``bash`` code blocks (backslash continuations joined,
comments dropped) and run one by one with ``bash -c`` in one working directory that holds the
repository's ``recipes/`` (so each command sees what it sees from the repository root), with
``repulse`` meaning ``sys.executable -m repulse`` and the environment's own ``torchrun``: the
environment ``make install`` builds. The README's own ``repulse toy build --out toy_assets`` builds
the toy assets the later commands read. A command is changed in one way only: flags that bound
its steps (``BOUNDS``, drawn from ``BOUNDING_FLAGS``) are appended, unless the command already
sets them. ``export`` lines set the environment of the commands after them; a command ending in
``&`` runs in the background (until the end) and the next command starts once its ``--port``
answers.

A command that cannot run here is listed in ``NOT_RUN`` with the reason; the two set-up commands
(``make demo``, ``make test``) are ``SETUP``. A README command that is neither run nor listed fails
the fast test below, and so does a listing that no README command matches. The listed ``repulse``
commands are still parsed (``--dry-run``), so a misspelt flag in them fails too.

Cost: every command starts Python, torch and transformers afresh, as a user's would. On the
shared 2-core machine (load averages 7-13 from other jobs) a run took 11-13 minutes, 4.5-6 minutes
of it CPU time of the commands; most of it is start-up, which flags cannot bound.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# the set-up commands of the Quick start: CI runs `make test` itself; the demo's quick form is
# tests/workflows/test_demo.py
SETUP = ("make demo", "make test")

# command prefix -> why it is not run here
NOT_RUN = {
    "source .venv/bin/activate": "activates make install's venv: these commands already run in it",
    "python -m venv .venv": "GPU install: creates a venv and installs CUDA torch from the network",
    "pip install torch": "GPU install: the CUDA build of torch (make install is the CPU install)",
    'pip install -c constraints.txt -e ".[deepspeed]"': "GPU install (make install installs these extras here)",
    'pip install -e ".[vllm]"': "the CUDA vLLM wheel: GPU only (CPU: make install-vllm)",
    "make install-vllm": "builds .venv-vllm (about 6 minutes); make test builds it and runs the vLLM tests",
    "VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m repulse generate": (
        "needs .venv-vllm from make install-vllm; tests/rl/vllm_backend runs the vllm backend there"
    ),
    "ray start --head": "multi-node: starts the head of a Ray cluster that outlives the command",
    "ray start --address": "multi-node: joins another machine to the cluster",
    "ray job submit": (
        "multi-node, 20 GPUs; tests/launch/test_ray_job.py submits a seed train_ppo_ray "
        "command the same way to a local two-node cluster"
    ),
}

# flags that bound a command's work (steps, iterations, rows read); nothing else is ever appended
BOUNDING_FLAGS = {
    "--train.max_steps",
    "--data.max_samples",
    "--pipeline.iterations",
    "--sft.train.max_steps",
    "--dpo.train.max_steps",
}

# command prefix -> flags appended (longest matching prefix wins)
BOUNDS = {
    "repulse sft": ["--train.max_steps", "2"],
    "repulse rm": ["--train.max_steps", "2"],
    "repulse rl": ["--train.max_steps", "1"],
    "torchrun": ["--train.max_steps", "2"],
    "repulse generate": ["--data.max_samples", "8"],
    "repulse pipeline rejection-sampling": ["--pipeline.iterations", "1", "--sft.train.max_steps", "2"],
    "repulse pipeline iterative-dpo": ["--pipeline.iterations", "1", "--dpo.train.max_steps", "2"],
    "repulse pipeline csft": ["--sft.train.max_steps", "2"],
}

# command prefix -> text its output must contain (what the README says it does)
EXPECT = {
    "repulse toy build": ["toy_prompt"],
    "repulse sft --config recipes/sft/openorca.yaml --ckpt.save_steps 1 --train.max_steps 3": [
        "--adam.lr: 5e-06 -> 0.0001 (applies from step 2 on)"
    ],
    "curl": ['"rewards"'],
    "printf": ["assistant:", "reward:"],
}

# the output a command leaves behind (relative to the working directory)
OUTPUTS = {
    "repulse toy build": "toy_assets/llama/config.json",
    "repulse rl --config recipes/repulse/toy_repulse.yaml": "runs/recipes/repulse/toy_repulse/metrics.jsonl",
    "repulse rl --launch.backend ray": "runs/grpo_ray/placement.json",
    "repulse pipeline rejection-sampling": "runs/recipes/workflows/rejection_sampling/iter.log",
}

TIMEOUT_S = 600  # per command: DeepSpeed under torchrun once took 262 s on the loaded machine


@dataclass
class Command:
    text: str  # as written, continuations joined, comment dropped
    line: int  # README line where it starts


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (a ``#`` starting a word outside quotes)."""
    quote = None
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\" and quote != "'":  # escapes work in "..." and $'...', not in '...'
                i += 2
                continue
            if c == quote[-1]:
                quote = None
        elif c == "\\":
            i += 2
            continue
        elif c == "$" and line[i + 1 : i + 2] == "'":
            quote = "$'"
            i += 2
            continue
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
        i += 1
    return line.rstrip()


def readme_commands(text: str) -> list[Command]:
    """Every command of the README's shell code blocks; a block in another language is not shell."""
    out: list[Command] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        lang, body, start = m.group(1), [], i + 1
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append((i + 1, lines[i]))
            i += 1
        i += 1
        assert lang in {"bash", "yaml", "text", "json", "python"}, (
            f"README.md:{start}: a code block without a known language ({lang!r}); shell blocks are ```bash"
        )
        if lang != "bash":
            continue
        pending, first = "", 0
        for number, raw in body:
            line = raw.rstrip()
            if not pending:
                first = number
            if line.endswith("\\"):
                pending += line[:-1].strip() + " "
                continue
            full = _strip_comment((pending + line.strip()).strip())
            pending = ""
            if full:
                out.append(Command(full, first))
    return out


def _match(command: str, table) -> str | None:
    hits = [p for p in table if command.startswith(p) and (len(command) == len(p) or command[len(p)] == " ")]
    return max(hits, key=len) if hits else None


def classify(commands: list[Command]) -> tuple[list[Command], list[Command], list[Command]]:
    """(set-up, not run, run)."""
    setup, listed, run = [], [], []
    for c in commands:
        if c.text in SETUP:
            setup.append(c)
        elif _match(c.text, NOT_RUN):
            listed.append(c)
        else:
            run.append(c)
    return setup, listed, run


def bounds_for(command: str) -> list[str]:
    """The bounding flags appended to ``command``: those of its prefix that it does not set itself."""
    prefix = _match(command.rstrip("& "), BOUNDS)
    flags = BOUNDS.get(prefix, []) if prefix else []
    words = command.split()
    out = []
    for flag, value in zip(flags[::2], flags[1::2]):
        assert flag in BOUNDING_FLAGS, f"{flag} is not a flag that bounds steps"
        if flag not in words:
            out += [flag, value]
    return out


RUNNABLE_PREFIXES = ("repulse ", "torchrun ", "curl ", "printf ", "export ")


# --------------------------------------------------------------------------- fast: the inventory


def test_every_readme_command_is_run_or_listed():
    commands = readme_commands(README.read_text())
    setup, listed, run = classify(commands)
    assert [c.text for c in setup] == list(SETUP), (
        "the Quick start's set-up commands are make demo, make test"
    )
    for c in run:
        assert c.text.startswith(RUNNABLE_PREFIXES), (
            f"README.md:{c.line}: {c.text!r} is neither run by this test nor listed in NOT_RUN with a reason"
        )
    for prefix in NOT_RUN:
        assert any(_match(c.text, {prefix: ""}) for c in listed), (
            f"NOT_RUN lists {prefix!r}: no README command"
        )
    for table in (BOUNDS, EXPECT, OUTPUTS):
        for prefix in table:
            assert any(_match(c.text, {prefix: ""}) for c in run), (
                f"{prefix!r}: no README command it applies to"
            )
    assert len(run) >= 20  # the README's examples, not an extraction gone wrong


def test_extraction_joins_continuations_and_drops_comments():
    text = "\n".join(
        [
            "```bash",
            "make demo   # creates .venv",
            "repulse sft --a 1 \\",
            "  --data.input_template $'User: {}\\nAssistant: ' --b '# kept'  # dropped",
            "```",
            "```yaml",
            "repulse: not a command",
            "```",
        ]
    )
    got = [c.text for c in readme_commands(text)]
    assert got == [
        "make demo",
        "repulse sft --a 1 --data.input_template $'User: {}\\nAssistant: ' --b '# kept'",
    ]
    assert bounds_for("repulse sft --train.max_steps 5") == []
    assert bounds_for("repulse sft --x 1") == ["--train.max_steps", "2"]


# --------------------------------------------------------------------------- slow: run them


def _env(shims: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "RAY_ADDRESS",
        "REPULSE_RM_TOKEN",
    ):
        env.pop(key, None)
    env["PATH"] = os.pathsep.join([str(shims), str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_for_port(
    port: int, proc: subprocess.Popen, command: str, log: Path, timeout: float = 180.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = log.read_text()
            pytest.fail(f"{command!r} exited ({proc.returncode}) before port {port} answered:\n{out[-3000:]}")
        if _port_open(port):
            return
        time.sleep(0.5)
    pytest.fail(f"{command!r}: port {port} did not answer within {timeout:.0f} s")


@pytest.fixture
def workdir(tmp_path):
    """A stand-in for the repository root: its recipes, a `repulse` on PATH, nothing else yet."""
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    shims = tmp_path / ".shims"
    shims.mkdir()
    shim = shims / "repulse"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m repulse "$@"\n')
    shim.chmod(0o755)
    return tmp_path, _env(shims)


@pytest.mark.slow
def test_readme_commands_run(workdir):
    cwd, env = workdir
    _, _, run = classify(readme_commands(README.read_text()))
    background: list[subprocess.Popen] = []
    timings: list[tuple[float, str]] = []
    try:
        for c in run:
            if c.text.startswith("export "):
                for word in shlex.split(c.text)[1:]:
                    key, _, value = word.partition("=")
                    env[key] = value
                continue
            command = c.text
            if command.endswith("&"):
                command = command[:-1].rstrip()
                port = int(re.search(r"--port (\d+)", command).group(1))
                assert not _port_open(port), (
                    f"port {port} is taken: README.md:{c.line} cannot start its server"
                )
                full = " ".join([command, *bounds_for(command)])
                log_path = cwd / f"background_{len(background)}.log"
                with open(log_path, "w") as log_file:  # a file, not a pipe nobody reads: it never fills
                    proc = subprocess.Popen(
                        ["bash", "-c", f"exec {full}"],
                        cwd=cwd,
                        env=env,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                    )
                background.append(proc)
                _wait_for_port(port, proc, command, log_path)
                continue
            full = " ".join([command, *(shlex.quote(f) for f in bounds_for(command))])
            start = time.monotonic()
            proc = subprocess.run(
                ["bash", "-c", full], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
            )
            timings.append((time.monotonic() - start, full))
            log = proc.stdout[-3000:] + proc.stderr[-3000:]
            assert proc.returncode == 0, f"README.md:{c.line} failed ({proc.returncode}): {full}\n{log}"
            for text in EXPECT.get(_match(command, EXPECT) or "", []):
                assert text in proc.stdout + proc.stderr, (
                    f"README.md:{c.line}: no {text!r} in the output\n{log}"
                )
            output = OUTPUTS.get(_match(command, OUTPUTS) or "")
            if output:
                assert (cwd / output).is_file(), f"README.md:{c.line}: {output} was not written"
    finally:
        for proc in background:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for seconds, full in timings:
            print(f"{seconds:6.1f} s  {full[:140]}")
        print(f"{sum(t for t, _ in timings):6.1f} s  in all")


@pytest.mark.slow
def test_listed_repulse_commands_parse(workdir):
    """The commands that cannot run here still name real flags: each parses with ``--dry-run``."""
    cwd, env = workdir
    _, listed, _ = classify(readme_commands(README.read_text()))
    checked = 0
    for c in listed:
        m = re.search(r"(?: -m | -- )(repulse .*)$", c.text)
        if not m:
            continue
        proc = subprocess.run(
            ["bash", "-c", f"{m.group(1)} --dry-run"],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if "--rollout.backend vllm" in c.text and importlib.util.find_spec("vllm") is None:
            # every flag parsed; the last check is that vLLM is installed, which it is not in this venv
            assert proc.returncode == 2 and "--rollout.backend vllm needs vLLM" in proc.stderr, proc.stderr
        else:
            assert proc.returncode == 0, f"README.md:{c.line}: {c.text}\n{proc.stderr[-3000:]}"
        checked += 1
    assert checked == 2  # the vllm-venv generate and the ray job submit
