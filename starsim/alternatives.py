"""Every answer with its alternatives: the same scenario file as a star, decoding alone
(``autoregressive``) and with a private draft per target (``one_for_one``), per GPU, with the
star's saturation point N* and its break-even N (past which a target of the star is slower
than decoding alone). Closed form here; ``starsim run/analyze --baselines`` simulates the
baselines too."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .analytic import analyze, closed_form
from .placement import place
from .scenario import Scenario, as_mode, parse_device_ref

MODES = ("star", "autoregressive", "one_for_one")


def gpus(scenario: Scenario) -> int:
    """Accelerators the scenario's roles occupy: each unit in use once (shared or not), times
    its pool's ``gpus``."""
    drafts, targets = place(scenario)
    return sum(scenario.devices[parse_device_ref(u)[0]].gpus for u in set(drafts) | set(targets))


@dataclass
class Option:
    """One way to serve the file's targets: its throughput and TPOT on its GPUs."""

    mode: str
    gpus: int
    throughput_tokens_per_s: float
    tpot_mean_s: float | None
    source: str = "closed form"

    @property
    def per_gpu(self) -> float:
        return self.throughput_tokens_per_s / self.gpus if self.gpus else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "gpus": self.gpus, "throughput_tokens_per_s": self.throughput_tokens_per_s,
                "throughput_per_gpu": self.per_gpu, "tpot_mean_s": self.tpot_mean_s, "source": self.source}


def option(scenario: Scenario, summary: dict[str, Any], source: str) -> Option:
    """An option from a summary (``metrics.summarize``'s or ``analyze``'s: the same keys)."""
    return Option(scenario.mode, gpus(scenario), float(summary["throughput_tokens_per_s"]),
                  summary.get("tpot_mean_s"), source)


def _per_target(star: dict[str, Any], servers: int, most: int) -> tuple[np.ndarray, np.ndarray]:
    """N = 1..most identical targets (the first group's demands) on ``servers`` draft servers:
    N, and each target's tokens per second by the closed form (``closed_form``)."""
    p = star["per_target"][0]
    d, z, m = p["draft_s"], p["cycle_alone_s"] - p["draft_s"], p["tokens_per_s"] * p["cycle_s"]
    n = np.arange(1, most + 1)
    return n, closed_form(np.ceil(n / servers), d, z, m)["per_target_tokens_per_s"]


def break_even(star: dict[str, Any], alone: dict[str, Any], servers: int, most: int = 100_000) -> int | None:
    """The most targets a star's draft servers can feed before one target of the first group
    gets fewer tokens per second than it would decoding alone (0: not even one; None: no star,
    or never within ``most``). Identical targets, the closed form."""
    if not star["per_target"]:
        return None
    n, rate = _per_target(star, servers, most)
    fine = rate >= alone["per_target"][0]["tokens_per_s"] * (1 - 1e-12)
    if fine.all():
        return None  # a draft fast enough never to be the bottleneck here
    return int(n[fine][-1]) if fine[0] else 0


def best_star_per_gpu(star: dict[str, Any], scenario: Scenario, most: int = 256) -> tuple[int, float] | None:
    """The target count (one group, each its own unit) at which the star makes the most tokens
    per second per GPU in closed form, and that rate."""
    if not star["per_target"] or scenario.mode != "star":
        return None
    servers = scenario.draft.fabric.servers
    n, rate = _per_target(star, servers, most)
    g_t = scenario.devices[parse_device_ref(scenario.targets[0].device)[0]].gpus
    g_d = scenario.devices[parse_device_ref(scenario.draft.device)[0]].gpus
    per_gpu = n * rate / (n * g_t + servers * g_d)
    i = int(np.argmax(per_gpu))
    return int(n[i]), float(per_gpu[i])


def variants(scenario: Scenario) -> dict[str, Scenario]:
    """The file as each mode (itself for its own)."""
    return {mode: scenario if scenario.mode == mode else as_mode(scenario, mode) for mode in MODES}


def alternatives(scenario: Scenario, simulated: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The file as each mode (closed form, or a simulated summary where ``simulated`` has the
    mode), N*, saturation, the break-even N and the star's best target count per GPU."""
    scenarios = variants(scenario)
    results = {mode: analyze(sc) for mode, sc in scenarios.items()}
    simulated = simulated or {}
    star = results["star"]
    best = best_star_per_gpu(star, scenarios["star"])
    options = [option(scenarios[m], simulated[m], "simulated") if m in simulated
               else option(scenarios[m], results[m], "closed form") for m in MODES]
    return {
        "options": [o.as_dict() for o in options],
        "n_saturation": star["n_saturation"],
        "saturated": star["saturated"],
        "n_targets": star["n_targets"],
        "break_even_n": break_even(star, results["autoregressive"], scenarios["star"].draft.fabric.servers),
        "best_star_per_gpu": None if best is None else {"n": best[0], "throughput_per_gpu": best[1]},
    }


def lines(alt: dict[str, Any], mine: str) -> list[str]:
    """The alternatives as the terminal shows them (``mine``: the file's own mode)."""
    rows = [["mode", "GPUs", "tok/s", "tok/s per GPU", "TPOT ms", "from"]]
    for o in alt["options"]:
        tpot = "-" if o["tpot_mean_s"] is None else f"{1e3 * o['tpot_mean_s']:.3g}"
        rows.append([o["mode"] + (" (this file)" if o["mode"] == mine else ""), str(o["gpus"]),
                     f"{o['throughput_tokens_per_s']:.4g}", f"{o['throughput_per_gpu']:.4g}", tpot, o["source"]])
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  " + "  ".join(c.ljust(w) for c, w in zip(r, width)).rstrip() for r in rows]
    n, n_star, be = alt["n_targets"], alt["n_saturation"], alt["break_even_n"]
    state = (f"SATURATED at {n} targets (the draft is the bottleneck)" if alt["saturated"]
             else f"not saturated at {n} targets")
    out.append(f"  N* = {n_star:.3g} targets per draft server: {state}")
    if be is not None:
        out.append("  break-even N = 0: even one target of this star is slower than decoding alone" if be == 0 else
                   f"  break-even N = {be}: past it, a target of the star gets fewer tokens/s than decoding alone"
                   + (f" (this file has {n}: past it)" if n > be else ""))
    best = alt["best_star_per_gpu"]
    if best is not None:
        rival = max((o for o in alt["options"] if o["mode"] != "star"), key=lambda o: o["throughput_per_gpu"])
        pays = (f"above {rival['mode']}'s {rival['throughput_per_gpu']:.4g}"
                if best["throughput_per_gpu"] > rival["throughput_per_gpu"]
                else f"below {rival['mode']}'s {rival['throughput_per_gpu']:.4g}: a shared draft does not pay here")
        out.append(f"  per GPU the star does best at N = {best['n']} targets per draft server "
                   f"({best['throughput_per_gpu']:.4g} tok/s per GPU in closed form, {pays})")
    top = max(alt["options"], key=lambda o: o["throughput_per_gpu"])
    here = next(o for o in alt["options"] if o["mode"] == mine)
    if top["mode"] != mine and here["throughput_per_gpu"] > 0:
        out.append(f"  best per GPU: {top['mode']}, {top['throughput_per_gpu'] / here['throughput_per_gpu']:.2f}x "
                   f"this file's {mine}")
    else:
        out.append(f"  best per GPU: this file's {mine}")
    return out
