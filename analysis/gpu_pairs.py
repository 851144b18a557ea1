"""The GPU pairs the project ships profiles and scenarios for: one list, read by
``import_gpu_profiles.py``, ``gpu_scenarios.py`` and ``gpu_star.py``.

Backends are chosen per pair by table coverage (``starsim calibrate import aiconfigurator``
warns where a pair's attention heads or contexts lie outside a backend's measured rows):
vLLM covers Qwen3 (32/8 and 16/8 heads) and Llama-3.1 (8/1 per GPU at TP 8, 32/8) on
every system here; Vicuna-7B's 32 KV heads (no GQA) have no vLLM decode-attention rows on
A100, so it uses TensorRT-LLM's, measured to 32k tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The GPU scenarios' and the published-speedup runs' workload: MT-Bench-like lengths, closed
# loop, as starsd_ref_n4.yaml (ASSUMED lengths)
MTBENCH_LIKE_WORKLOAD = """workload:
  kind: closed
  prompts: 80
  prompt_tokens: {kind: lognormal, mean: 90, cv: 0.6}
  output_tokens: {kind: lognormal, mean: 400, cv: 0.5}
  repeat: true
"""


@dataclass(frozen=True)
class Pair:
    spec: str
    system: str
    backend: str
    tp: int = 1
    draft_tp: int = 1
    label: str = ""

    def profile(self, role: str, overhead_us: float = 0.0) -> str:
        tp = self.tp if role == "target" else self.draft_tp
        oh = f"-oh{overhead_us:g}us" if overhead_us else ""
        return f"models/profiles/{self.spec}.{role}.{self.system}-{self.backend}-tp{tp}{oh}.bfloat16.yaml"

    @property
    def slug(self) -> str:
        return f"{self.spec}-{self.system}" + (f"-tp{self.tp}" if self.tp > 1 else "")

    def step_file(self) -> str:
        """The target's step-cost file (`calibrate import aiconfigurator` writes it beside the profile)."""
        return self.profile("target").replace(".yaml", ".step.yaml")

    def kv_capacity(self, root: Path) -> int:
        """KV tokens the target's GPUs hold, as the import worked it out (the step file's ``kv``)."""
        import yaml

        return int(yaml.safe_load((root / self.step_file()).read_text())["kv"]["capacity_tokens"])


# Serving targets (continuous batching): vLLM's default chunked-prefill budget on an H100-class GPU
MAX_BATCHED_TOKENS = 8192


def serving_stagger_s(batch: int) -> float:
    """Users join over about half a request (MT-Bench-like outputs of ~400 tokens at ~10-40 ms a
    step), so a run's sequences are out of step as a long run's are."""
    return float(f"{0.5 * 400 * 0.02 / batch:g}")


PAIRS = [
    Pair("qwen3-8b-qwen3-06b", "h100_sxm", "vllm", label="Qwen3-8B / Qwen3-0.6B, H100 SXM"),
    Pair("qwen3-8b-qwen3-06b", "h200_sxm", "vllm", label="Qwen3-8B / Qwen3-0.6B, H200 SXM"),
    Pair("qwen3-8b-qwen3-06b", "a100_sxm", "vllm", label="Qwen3-8B / Qwen3-0.6B, A100 SXM"),
    Pair("llama31-70b-llama31-8b", "h100_sxm", "vllm", tp=8, label="Llama-3.1-70B (TP 8) / Llama-3.1-8B, H100 SXM"),
    Pair("llama31-70b-llama31-8b", "h200_sxm", "vllm", tp=8, label="Llama-3.1-70B (TP 8) / Llama-3.1-8B, H200 SXM"),
    Pair("vicuna7b-eagle", "a100_sxm", "trtllm", label="Vicuna-7B / EAGLE head, A100 SXM (StarSD reference)"),
]
