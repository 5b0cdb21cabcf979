"""Which ``--engine.*`` settings each training engine honours, and what is said about the rest.

The ``engine`` section carries the seed's DeepSpeed settings (``--zero_stage``, ``--adam_offload``,
``--overlap_comm``, ``--zpg``, ``--grad_accum_dtype``) next to our own (``cpu_offload``). Not
every backend can honour every one of them: the single-process ``local`` engine shards and
offloads nothing, FSDP2 has no ZeRO++ partitioning, DeepSpeed overlaps communication only from
ZeRO-2 on. A value that the chosen backend would not use is never dropped silently:
:func:`check_engine_fields` warns once, naming the flag, the backend and the reason (or refuses
a value no backend accepts). What each backend does with the fields it honours:

==================  =======================  ==============================  ===========================
field               local                    fsdp                            deepspeed
==================  =======================  ==============================  ===========================
zero_stage          (nothing to shard)       3: reshard after forward;       ZeRO stage 0-3
                                             0-2: keep gathered to backward
adam_offload        (warned)                 CPUOffloadPolicy                DeepSpeed CPU Adam
cpu_offload         (warned)                 CPUOffloadPolicy                ZeRO-3 ``offload_param``
overlap_comm        (warned)                 always on (FSDP2 prefetches)    ZeRO-2/3 overlap_comm
zpg                 (warned)                 (warned)                        ZeRO-3 hpZ partition size
grad_accum_dtype    (warned)                 fp32 only (sharded fp32 grads)  ``data_types``
==================  =======================  ==============================  ===========================

Imports no torch: ``parse_config`` calls it before anything is loaded, and ``build_engine`` again
for configs built in code.
"""

from __future__ import annotations

from typing import Any

from repulse.errors import UserError, warn_once

GRAD_ACCUM_DTYPES = ("fp32", "fp16", "bf16")


def _default(name: str) -> Any:
    from repulse.config.sections import EngineSection

    return getattr(EngineSection(), name)


def unused_engine_fields(engine: Any) -> list[tuple[str, str]]:
    """``(field, reason)`` for every ``--engine.*`` value set away from its default that
    ``engine.backend`` would not use. ``engine`` is an ``EngineSection``."""
    backend, stage = engine.backend, engine.zero_stage
    out: list[tuple[str, str]] = []

    def off_default(name: str) -> bool:
        return getattr(engine, name) != _default(name)

    if backend == "local":
        shard = "use --engine.backend deepspeed or fsdp to shard the model"
        if off_default("zero_stage"):
            out.append(("zero_stage", f"every process holds the whole model and optimizer; {shard}"))
        for name in ("adam_offload", "cpu_offload"):
            if getattr(engine, name):
                out.append((name, "nothing is offloaded; use --engine.backend fsdp or deepspeed to offload"))
        if engine.overlap_comm:
            out.append(("overlap_comm", "DeepSpeed's setting; gradients are all-reduced once per step"))
        if off_default("zpg"):
            out.append(("zpg", "ZeRO++ hierarchical partitioning is a DeepSpeed ZeRO-3 setting"))
        if engine.grad_accum_dtype is not None:
            out.append(("grad_accum_dtype", "gradients accumulate in the parameters' own dtype"))
    elif backend == "fsdp":
        if off_default("zpg"):
            out.append(
                ("zpg", "ZeRO++ hierarchical partitioning is DeepSpeed's; FSDP2 shards over all processes")
            )
        if engine.grad_accum_dtype not in (None, "fp32"):
            out.append(("grad_accum_dtype", "FSDP2 accumulates gradients in fp32 (the sharded master dtype)"))
    elif backend == "deepspeed":
        if engine.overlap_comm and stage < 2:
            out.append(
                ("overlap_comm", f"DeepSpeed overlaps communication with ZeRO-2/3 only (zero_stage {stage})")
            )
        if off_default("zpg") and stage != 3:
            out.append(("zpg", f"ZeRO++ hierarchical partitioning needs --engine.zero_stage 3 (got {stage})"))
        if engine.cpu_offload and stage != 3:
            out.append(
                ("cpu_offload", f"DeepSpeed offloads parameters with ZeRO-3 only (zero_stage {stage}); "
                 "--engine.adam_offload offloads the optimizer at any stage")
            )  # fmt: skip
    return out


def check_engine_fields(engine: Any) -> None:
    """Refuse impossible ``--engine.*`` values and warn once per value the backend ignores."""
    if engine.grad_accum_dtype is not None and engine.grad_accum_dtype not in GRAD_ACCUM_DTYPES:
        raise UserError(
            f"--engine.grad_accum_dtype {engine.grad_accum_dtype!r} is not a dtype DeepSpeed accumulates in; "
            f"choose one of {', '.join(GRAD_ACCUM_DTYPES)}."
        )
    if engine.zpg < 1:
        raise UserError(f"--engine.zpg (ZeRO++ partition size) must be >= 1, got {engine.zpg}.")
    for name, reason in unused_engine_fields(engine):
        value = getattr(engine, name)
        warn_once(
            f"engine-field:{engine.backend}:{name}",
            f"--engine.{name} {value!r} has no effect with --engine.backend {engine.backend}: {reason}.",
        )
