"""The devices a run uses: the data-parallel mesh, how arrays are placed on it, and the devices' peak FLOP/s (for MFU)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from planck.model.config import ConfigError

# Dense bf16 peak FLOP/s by device kind, for MFU and time estimates; unknown devices (CPUs, most
# laptop GPUs) report none unless PLANCK_PEAK_TFLOPS gives the card's figure.
PEAK_ENV = "PLANCK_PEAK_TFLOPS"
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


def peak_flops() -> float | None:
    """The devices' summed dense bf16 peak: PLANCK_PEAK_TFLOPS per device when set, else by their kind if known."""
    if text := os.environ.get(PEAK_ENV, "").strip():
        try:
            per_device = float(text)
        except ValueError:
            per_device = math.nan
        if not 0 < per_device < 1e5:  # NaN fails too
            raise ConfigError(f"{PEAK_ENV}={text!r}: give one device's dense bf16 peak in TFLOP/s, such as 45")
        return per_device * 1e12 * jax.device_count()
    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return flops * jax.device_count()
    return None


def fsdp_sharding(x, mesh: Mesh) -> NamedSharding:
    """Split an array along its largest axis that the device count divides; small or indivisible ones stay replicated."""
    n = mesh.devices.size
    shape = getattr(x, "shape", ())
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % n == 0 and shape[axis] >= n:
            spec = [None] * len(shape)
            spec[axis] = "data"
            return NamedSharding(mesh, P(*spec))
    return NamedSharding(mesh, P())


@dataclass
class Devices:
    """One data-parallel mesh over every device of every process, and the shardings the loop uses."""

    mesh: Mesh
    replicated: NamedSharding
    batch: NamedSharding  # (grad_accum, batch, seq_len): batch split over devices
    eval: NamedSharding  # (batch, seq_len)
    fsdp: bool

    @classmethod
    def create(cls, fsdp: bool) -> "Devices":
        """The mesh over all devices (classic auto sharding: the NNX embedding gather refuses explicit mode)."""
        mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        return cls(mesh, NamedSharding(mesh, P()), NamedSharding(mesh, P(None, "data")), NamedSharding(mesh, P("data")), fsdp)

    @property
    def count(self) -> int:
        return jax.device_count()

    @property
    def is_main(self) -> bool:
        """Process 0 writes the run folder's files; orbax coordinates checkpoints across processes."""
        return jax.process_index() == 0

    def place(self, state):
        """Put model/optimizer state on the mesh: replicated, or split by fsdp_sharding."""
        shardings = jax.tree.map(lambda x: fsdp_sharding(x, self.mesh) if self.fsdp else self.replicated, state)
        return jax.device_put(state, shardings)
