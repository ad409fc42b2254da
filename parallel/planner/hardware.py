"""GPU types the planner knows: dense peaks, HBM, NVLink and network bandwidth per GPU.

Figures are the vendors' datasheet numbers (dense, without sparsity). Bandwidths are per GPU and
per direction: NVLink (intra-node) and the scale-out network (one 400 Gb/s NIC per GPU = 50 GB/s,
the usual DGX/HGX setup; B200 systems ship 800 Gb/s). Any field can be overridden from the command
line (`pretrain plan ... --gpu H100 --gpu-set net_gbps=25`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from configcore import ConfigError


@dataclass(frozen=True)
class GPUSpec:
    name: str
    bf16_tflops: float  # dense bf16 peak
    fp8_tflops: float  # dense fp8 peak (0: no fp8 tensor cores)
    hbm_gib: float
    nvlink_gbps: float  # GB/s per GPU per direction inside a node
    net_gbps: float  # GB/s per GPU per direction between nodes

    @property
    def hbm_bytes(self) -> int:
        return int(self.hbm_gib * 2**30)


GPUS: dict[str, GPUSpec] = {
    g.name: g
    for g in (
        # H100 SXM5: 989 TFLOP/s bf16, 1979 fp8, 80 GB HBM3, NVLink4 900 GB/s bidirectional
        GPUSpec("H100", 989.0, 1979.0, 80 * 1e9 / 2**30, 450.0, 50.0),
        # H200 SXM: H100's compute, 141 GB HBM3e
        GPUSpec("H200", 989.0, 1979.0, 141 * 1e9 / 2**30, 450.0, 50.0),
        # A100 SXM 80GB: 312 TFLOP/s bf16, no fp8, NVLink3 600 GB/s bidirectional, 200 Gb/s NICs
        GPUSpec("A100-80GB", 312.0, 0.0, 80 * 1e9 / 2**30, 300.0, 25.0),
        # B200: 2250 TFLOP/s bf16, 4500 fp8 (dense), 180 GB HBM3e, NVLink5 1.8 TB/s bidirectional
        GPUSpec("B200", 2250.0, 4500.0, 180 * 1e9 / 2**30, 900.0, 100.0),
    )
}
ALIASES = {"H100-SXM": "H100", "H100SXM": "H100", "A100": "A100-80GB", "A100-80G": "A100-80GB"}


def get_gpu(name: str, overrides: list[str] | None = None) -> GPUSpec:
    """The named GPU with `field=value` overrides applied."""
    key = ALIASES.get(name.upper(), name.upper())
    gpu = next((g for n, g in GPUS.items() if n.upper() == key), None)
    if gpu is None:
        raise ConfigError(f"--gpu {name!r} is not one of {', '.join(GPUS)}")
    numeric = {f.name for f in fields(GPUSpec)} - {"name"}
    changes = {}
    for item in overrides or []:
        k, sep, v = item.partition("=")
        if not sep or k not in numeric:
            raise ConfigError(f"--gpu-set {item!r}: write FIELD=VALUE with FIELD one of {numeric}")
        try:
            changes[k] = float(v)
        except ValueError:
            raise ConfigError(f"--gpu-set {item!r}: {v!r} is not a number") from None
    return replace(gpu, **changes)
