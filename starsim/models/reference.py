"""How fast a machine is right now: a fixed kernel timed by calibration and by real runs alike,
so profiles and runs taken at different moments can be compared (``calibrate compare``,
``validate --speed``)."""

from __future__ import annotations

REFERENCE = "median time of a 512x512 float32 matmul, torch.utils.benchmark, same threads"


# calibration times the reference beside every grid point's pass: short, so that doing so
# adds little to a calibration
REF_BLOCK_S = 0.02


def reference_speed(threads: int, device: str, min_run_time: float = 0.2) -> float:
    """How fast the machine is right now, on a fixed kernel (see :data:`REFERENCE`).

    Shared machines drift by 10% and more over minutes; two profiles of the same spec
    taken at different speeds disagree by that much, and this says so (``calibrate compare``)
    and corrects for it (each profile row keeps the reference timed beside it, ``ref_s``).
    """
    import torch
    from torch.utils import benchmark

    a = torch.randn(512, 512, generator=torch.Generator().manual_seed(0)).to(device)
    timer = benchmark.Timer(stmt="a @ a", globals={"a": a}, num_threads=threads)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return float(timer.blocked_autorange(min_run_time=min_run_time).median)
