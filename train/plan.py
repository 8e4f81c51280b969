"""What a run will cost before it starts: parameters, FLOPs, the compiled step's memory, the largest micro-batch, time.

The memory comes from XLA's own analysis of the actual train step, compiled for this machine's
devices at the run's shapes (nothing is allocated: the model and optimizer are abstract). The
trainer uses the same analysis to refuse a micro-batch that cannot fit, and to choose one when
train.micro_batch is `auto`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from planck.model.gpt import GPT, flops_per_token, param_count_formula

from .config import RunConfig
from .devices import peak_flops
from .optim import make_optimizer
from .step import train_step

GB = 1e9
HEADROOM = 0.92  # of the device's memory: XLA's allocator, the loader's buffers and fragmentation need the rest


@dataclass
class StepMemory:
    """XLA's memory analysis of one compiled train step, per device, in bytes."""

    micro_batch: int
    arguments: int  # parameters, optimizer state, the batch
    outputs: int
    aliased: int  # outputs written into donated arguments
    temporaries: int  # activations, gradients, workspace

    @property
    def peak(self) -> int:
        """What the step needs resident at once."""
        return self.arguments + self.outputs - self.aliased + self.temporaries


def device_memory(override_gb: float = 0.0) -> int | None:
    """Bytes one device can use: `override_gb` if set, a GPU's limit, a CPU host's available memory, else None."""
    if override_gb > 0:
        return int(override_gb * GB)
    stats = jax.local_devices()[0].memory_stats() or {}  # another process's devices cannot be asked
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    if jax.default_backend() == "cpu":
        try:
            with open("/proc/meminfo") as f:
                fields = dict(line.split(":", 1) for line in f)
            return int(fields["MemAvailable"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            return None
    return None


def step_memory(cfg: RunConfig, micro_batch: int) -> StepMemory:
    """Compile the train step for `micro_batch` sequences per device on this machine's devices; XLA's memory figures."""

    def build():
        model = GPT(cfg.model, rngs=nnx.Rngs(0))
        return model, nnx.Optimizer(model, make_optimizer(cfg.optim, cfg.train.steps), wrt=nnx.Param)

    model, optimizer = nnx.eval_shape(build)
    shape = (cfg.train.grad_accum, micro_batch * jax.device_count(), cfg.model.seq_len)
    batch = {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32), "targets": jax.ShapeDtypeStruct(shape, jnp.int32),
             "mask": jax.ShapeDtypeStruct(shape, jnp.float32)}
    stats = train_step.lower(model, optimizer, batch).compile().memory_analysis()
    return StepMemory(micro_batch, int(stats.argument_size_in_bytes), int(stats.output_size_in_bytes),
                      int(stats.alias_size_in_bytes), int(stats.temp_size_in_bytes))


def largest_micro_batch(cfg: RunConfig, budget: int, limit: int = 4096) -> tuple[int, StepMemory] | None:
    """The largest micro-batch whose step fits `budget` bytes (None if even 1 does not).

    Memory is nearly affine in the micro-batch, so each probe is where the line through the nearest
    measurements reaches the budget; probing stops when a fitting size's successor does not fit
    (usually 3-4 compilations).
    """
    usable = budget * HEADROOM
    measured: dict[int, StepMemory] = {}

    def fits(n: int) -> bool:
        if n not in measured:
            measured[n] = step_memory(cfg, n)
        return measured[n].peak <= usable

    if not fits(1):
        return None
    lo, hi = 1, limit + 1  # lo fits; hi does not (limit + 1: nothing above the limit is tried)
    probe = 2
    while hi - lo > 1:
        if fits(min(probe, limit)):
            lo = min(probe, limit)
        else:
            hi = min(probe, limit)
        if hi - lo <= 1:
            break
        other = max((n for n in measured if n != lo), key=lambda n: -abs(n - lo))
        slope = max((measured[other].peak - measured[lo].peak) / (other - lo), 1.0)
        probe = lo + int((usable - measured[lo].peak) // slope)
        # At most double what is known to fit: a bad slope (XLA's memory is only nearly affine) must not send the
        # next compilation to a huge shape.
        probe = min(max(probe, lo + 1), hi - 1, 2 * lo)
    return lo, measured[lo]


@dataclass
class Plan:
    """The figures `planck plan` prints."""

    parameters: int
    flops_per_token: float
    tokens_per_step: int
    steps: int
    memory: StepMemory
    budget: int | None
    largest: tuple[int, StepMemory] | None
    peak_flops: float | None
    mfu: float

    @property
    def hours(self) -> float | None:
        """Time to the token budget at the stated MFU (None when the devices' peak is unknown)."""
        if not self.peak_flops:
            return None
        tokens_per_s = self.mfu * self.peak_flops / self.flops_per_token
        return self.steps * self.tokens_per_step / tokens_per_s / 3600


def make_plan(cfg: RunConfig, mfu: float = 0.4, peak_tflops: float = 0.0, find_largest: bool = True) -> Plan:
    """Everything a run of `cfg` will need on this machine's devices."""
    tokens_per_step = cfg.train.micro_batch * jax.device_count() * cfg.train.grad_accum * cfg.model.seq_len
    steps = max(1, math.ceil(cfg.train.tokens / tokens_per_step)) if cfg.train.tokens else cfg.train.steps
    budget = device_memory(cfg.train.device_memory_gb)
    return Plan(
        parameters=param_count_formula(cfg.model),
        flops_per_token=flops_per_token(cfg.model),
        tokens_per_step=tokens_per_step,
        steps=steps,
        memory=step_memory(cfg, cfg.train.micro_batch),
        budget=budget,
        largest=largest_micro_batch(cfg, budget) if (find_largest and budget) else None,
        peak_flops=peak_tflops * 1e12 if peak_tflops > 0 else peak_flops(),
        mfu=mfu,
    )
