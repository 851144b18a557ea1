"""The device the check runs on: its name, versions and aiconfigurator system; where the
check's files name other files from."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

from ...errors import StarsimError
from .options import REPO, SYSTEMS


class Fail(StarsimError):
    """A prerequisite is missing: one line, exit 2."""


def system_for(name: str) -> tuple[str, bool] | None:
    """(aiconfigurator system, exact) for torch's device name, e.g. "NVIDIA H100 80GB HBM3" ->
    ("h100_sxm", True); None when the database has no such GPU."""
    up = name.upper()
    for key, system in SYSTEMS:
        if key in up:
            return system, not ("PCIE" in up or "NVL" in up)
    return None


def slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:48].strip("-") or "device"


def device_info(device: str) -> dict:
    """Name and versions of ``device``; Fail when it is a CUDA device this machine lacks."""
    try:
        import torch
        import transformers
    except ImportError as e:
        raise Fail(f"torch and transformers are needed ({e.name} is missing): pip install -e '.[torch]'") from None
    info = {"device": device, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "host": platform.node(), "platform": platform.platform()}
    if device == "cpu":
        info.update(name=f"{_cpu_name()} ({os.cpu_count()} logical CPUs)", kind="cpu")
        return info
    if not torch.cuda.is_available():
        raise Fail(f"--device {device}: this torch ({torch.__version__}) sees no CUDA device; run on a GPU "
                   "machine, or --device cpu for the toy-size run")
    index = int(device.split(":")[1])
    if index >= torch.cuda.device_count():
        raise Fail(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    props = torch.cuda.get_device_properties(index)
    info.update(name=torch.cuda.get_device_name(index), kind="cuda", cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(), memory_gib=round(props.total_memory / 2**30, 1),
                multiprocessors=props.multi_processor_count, capability=f"{props.major}.{props.minor}",
                driver=_driver(index))
    return info


def _cpu_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        return next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name"))
    except (OSError, StopIteration):
        return name


def _driver(index: int) -> str | None:
    """The driver's version, which torch does not report."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", str(index)],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=20, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                               timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return head + (" with uncommitted changes" if dirty else "")


def ref(path: Path, out: Path) -> str:
    """``path`` as a file in ``out`` names it: relative when both lie in the repository or the
    path in ``out`` (the directory then travels whole), else absolute."""
    path = path.resolve()
    if path.is_relative_to(out) or (path.is_relative_to(REPO) and out.is_relative_to(REPO)):
        return os.path.relpath(path, out)
    return str(path)


def shown(path: Path, out: Path) -> str:
    """``path`` for a reader of ``out``'s files: relative to ``out`` or the repository, else absolute."""
    path = path.resolve()
    for base in (out, REPO):
        if path.is_relative_to(base):
            return str(path.relative_to(base))
    return str(path)
