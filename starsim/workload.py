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

from .distributions import MAX_LENGTH, length_sampler
from .errors import ScenarioError
from .scenario import ClosedLoop, GammaArrivals, Poisson, TraceReplay

TOKENS_PER_WORD = 1.3  # rule of thumb for Llama-family tokenizers on English text


def _bad(path: str | Path, message: str) -> ScenarioError:
    # A data file named by the scenario is user input: one line, exit code 2 in the CLI.
    return ScenarioError(str(path), [("", message)])


def _read_csv(path: str | Path, need: list[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise _bad(path, f"the file is empty (expected a CSV with columns {','.join(need)})") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise _bad(path, f"not a readable CSV: {str(e).strip().splitlines()[0]}") from None
    except OSError as e:
        raise _bad(path, f"cannot read: {e.strerror or e}") from None
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise _bad(path, f"missing column(s) {', '.join(missing)} (the header is {','.join(map(str, df.columns))})")
    if df.empty:
        raise _bad(path, "no data rows")
    return df


def _counts(df: pd.DataFrame, col: str, path: str | Path) -> np.ndarray:
    """A column of token counts as int64 (truncated), 0 raised to 1; a bad cell names its line."""
    vals = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(vals)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        cell = df[col].iloc[i]
        got = "an empty cell" if pd.isna(cell) else repr(cell)
        raise _bad(path, f"line {i + 2}: {col} must be a number, got {got}")
    out = (vals < 0) | (vals > MAX_LENGTH)  # 1e30 overflowed int64 and quietly became 1
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise _bad(path, f"line {i + 2}: {col} must be a token count in 0..{MAX_LENGTH:,}, got {df[col].iloc[i]!r}")
    return np.maximum(vals.astype("int64"), 1)


def load_lengths_csv(path: str | Path) -> list[tuple[int, int]]:
    """A CSV with ``prompt_tokens,output_tokens`` columns -> list of pairs (an optional
    ``category`` column: :func:`prompt_categories`)."""
    df = _read_csv(path, ["prompt_tokens", "output_tokens"])
    p, o = _counts(df, "prompt_tokens", path), _counts(df, "output_tokens", path)
    return [(int(a), int(b)) for a, b in zip(p, o)]


def load_prompts_jsonl(path: str | Path) -> list[int]:
    """Prompt lengths (estimated tokens) of the first turn of each MT-Bench style record."""
    return [n for n, _ in _prompt_records(path)]


def prompt_categories(w: ClosedLoop) -> list[str | None] | None:
    """The category of each prompt of the closed loop's set: a ``lengths_file``'s ``category``
    column or a ``prompts_jsonl`` record's ``category`` (None where a row, or the whole file,
    has none); None without either file."""
    if w.lengths_file:
        df = _read_csv(w.lengths_file, ["prompt_tokens", "output_tokens"])
        if "category" not in df.columns:
            return [None] * len(df)
        return [None if pd.isna(c) else str(c) for c in df["category"]]
    return [c for _, c in _prompt_records(w.prompts_jsonl)] if w.prompts_jsonl else None


def _prompt_records(path: str | Path) -> list[tuple[int, str | None]]:
    out = []
    try:
        lines = Path(path).read_text().splitlines()
    except UnicodeDecodeError:
        raise _bad(path, "not a UTF-8 text file") from None
    except OSError as e:
        raise _bad(path, f"cannot read: {e.strerror or e}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise _bad(path, f"line {n}: not valid JSON: {e.msg}") from None
        turns = rec.get("turns") if isinstance(rec, dict) else None
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
            raise _bad(path, f"line {n}: expected a record with a 'turns' list of strings")
        cat = rec.get("category")
        if cat is not None and not isinstance(cat, str):
            raise _bad(path, f"line {n}: category must be a string, got {cat!r}")
        out.append((max(1, round(len(turns[0].split()) * TOKENS_PER_WORD)), cat))
    if not out:
        raise _bad(path, "no prompts in the file")
    return out


def load_azure_trace(path: str | Path) -> pd.DataFrame:
    """Azure LLM inference trace (``TIMESTAMP,ContextTokens,GeneratedTokens``) ->
    columns ``t`` (seconds from the first row), ``prompt_tokens``, ``output_tokens``."""
    df = _read_csv(path, ["TIMESTAMP", "ContextTokens", "GeneratedTokens"])
    try:
        ts = pd.to_datetime(df["TIMESTAMP"], format="mixed")
    except (ValueError, TypeError) as e:
        raise _bad(path, f"TIMESTAMP: {str(e).strip().splitlines()[0]}") from None
    t = (ts - ts.iloc[0]).dt.total_seconds().to_numpy()
    return pd.DataFrame(
        {
            "t": t,
            "prompt_tokens": _counts(df, "ContextTokens", path),
            "output_tokens": _counts(df, "GeneratedTokens", path),
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
        # Read the trace now, not at the first draw, so a bad file fails before simulating.
        return _replay(w, load_azure_trace(w.path))
    return _draws(w, rng)


def _replay(w: TraceReplay, df: pd.DataFrame) -> Iterator[tuple[float, int, int]]:
    df = df.iloc[w.start_row:]
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


def _draws(w: Poisson | GammaArrivals, rng: np.random.Generator) -> Iterator[tuple[float, int, int]]:
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
