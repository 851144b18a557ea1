"""Workloads: prompt sets for closed loops, arrival processes for open loops, trace loaders.

Everything here is plain data (lists of ``(prompt_tokens, output_tokens)`` and arrival
times) so the simulator and the real backend draw the same requests from the same seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from .distributions import length_sampler
from .scenario import ClosedLoop, GammaArrivals, Poisson, TraceReplay

TOKENS_PER_WORD = 1.3  # rule of thumb for Llama-family tokenizers on English text


def load_lengths_csv(path: str | Path) -> list[tuple[int, int]]:
    """A CSV with ``prompt_tokens,output_tokens`` columns -> list of pairs."""
    df = pd.read_csv(path)
    missing = {"prompt_tokens", "output_tokens"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    return [(max(1, int(p)), max(1, int(o))) for p, o in zip(df.prompt_tokens, df.output_tokens)]


def load_prompts_jsonl(path: str | Path) -> list[int]:
    """Prompt lengths (estimated tokens) of the first turn of each MT-Bench style record."""
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            text = json.loads(line)["turns"][0]
            out.append(max(1, round(len(text.split()) * TOKENS_PER_WORD)))
    return out


def load_azure_trace(path: str | Path) -> pd.DataFrame:
    """Azure LLM inference trace (``TIMESTAMP,ContextTokens,GeneratedTokens``) ->
    columns ``t`` (seconds from the first row), ``prompt_tokens``, ``output_tokens``."""
    df = pd.read_csv(path)
    need = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
    if not need <= set(df.columns):
        raise ValueError(f"{path}: expected columns {sorted(need)}, got {list(df.columns)}")
    ts = pd.to_datetime(df["TIMESTAMP"], format="mixed")
    t = (ts - ts.iloc[0]).dt.total_seconds().to_numpy()
    return pd.DataFrame(
        {
            "t": t,
            "prompt_tokens": df["ContextTokens"].clip(lower=1).astype("int64"),
            "output_tokens": df["GeneratedTokens"].clip(lower=1).astype("int64"),
        }
    )


def prompt_set(w: ClosedLoop, rng: np.random.Generator) -> list[tuple[int, int]]:
    """The closed loop's prompt set, shared by all targets (like the 80 MT-Bench questions)."""
    if w.lengths_file:
        return load_lengths_csv(w.lengths_file)
    draw_out = length_sampler(w.output_tokens, rng)
    if w.prompts_jsonl:
        return [(p, draw_out()) for p in load_prompts_jsonl(w.prompts_jsonl)]
    draw_prompt = length_sampler(w.prompt_tokens, rng)
    return [(draw_prompt(), draw_out()) for _ in range(w.prompts)]


def arrivals(w: Poisson | GammaArrivals | TraceReplay, rng: np.random.Generator) -> Iterator[tuple[float, int, int]]:
    """Open-loop arrivals ``(t, prompt_tokens, output_tokens)``, in time order, possibly endless."""
    if isinstance(w, TraceReplay):
        df = load_azure_trace(w.path).iloc[w.start_row:]
        if w.max_rows is not None:
            df = df.iloc[: w.max_rows]
        t = (df["t"].to_numpy() - (df["t"].iloc[0] if len(df) else 0.0)) * w.time_scale
        p = df["prompt_tokens"].to_numpy()
        o = df["output_tokens"].to_numpy()
        if w.max_prompt_tokens:
            p = np.minimum(p, w.max_prompt_tokens)
        if w.max_output_tokens:
            o = np.minimum(o, w.max_output_tokens)
        for ti, pi, oi in zip(t, p, o):
            yield float(ti), int(pi), int(oi)
        return
    gap: Callable[[], float]
    mean = 1.0 / w.rate_per_s
    if isinstance(w, GammaArrivals):
        shape = 1.0 / (w.cv * w.cv)
        gap = lambda: rng.gamma(shape, mean / shape)  # noqa: E731
    else:
        gap = lambda: rng.exponential(mean)  # noqa: E731
    draw_prompt = length_sampler(w.prompt_tokens, rng)
    draw_out = length_sampler(w.output_tokens, rng)
    t = 0.0
    while True:
        t += gap()
        yield t, draw_prompt(), draw_out()
