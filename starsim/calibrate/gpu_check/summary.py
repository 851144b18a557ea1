"""``summary.md``: the device, every command with its wall time and outcome, the comparison,
the fitted profiles, the real runs and their validation."""

from __future__ import annotations

import json
from pathlib import Path

from .device import shown


def summary_md(out: Path, p: dict, mine: dict, ns: list[int]) -> str:
    """``p``: the provenance (``steps.json``); ``mine``: role -> (path, profile) measured."""
    gpu = p["kind"] == "cuda"
    versions = f"torch {p['torch']}" + (f" (CUDA {p.get('cuda')}, cuDNN {p.get('cudnn')})" if gpu else "")
    lines = [f"# GPU check: {p['name']}, {p['started'][:10]}", "",
             f"- started {p['started']}; {clock(p['wall_s'])} of a {p['budget_s']:.0f} s budget",
             f"- device {p['device']}: {p['name']}" + (
                 f", {p.get('memory_gib')} GiB, {p.get('multiprocessors')} SMs, compute capability "
                 f"{p.get('capability')}, driver {p.get('driver')}" if gpu else ""),
             f"- {versions}, transformers {p['transformers']}, Python {p['python']}; starsim at git {p['starsim_git']}",
             f"- host {p['host']} ({p['platform']})",
             f"- spec {p['spec']} ({p['dtype']}, grid {p['grid']}); imported profiles: system {p['system']}"
             + (f" ({p['system_match']})" if p["system_match"] else ""),
             f"- pair {shown(Path(p['pair']), out)} ({'built here with --quick' if p['pair_built'] else 'given'})",
             f"- command: `{p['command']}`", "", "## Steps", "",
             "| step | command | wall s | outcome |", "|---|---|---|---|"]
    for s in p["steps"]:
        cmd = s["command"].replace(str(out) + "/", "").replace(str(out), ".")
        lines.append(f"| {s['step']} | `{cmd}` | {s['wall_s']:.1f} | {s['status']} |" if cmd else
                     f"| {s['step']} | | | {s['status']} |")
    c = p["compare"]
    lines += ["", "## Measured vs imported (aiconfigurator)", ""]
    if (out / "compare.md").exists():
        lines.append((out / "compare.md").read_text().rstrip())
    else:
        lines.append(c.get("status", "not run (--no-compare)") if c else "not run (--no-compare)")
    lines += ["", f"## Fitted profiles of {p['spec']} on this device", ""]
    lines += fits_markdown(mine) if mine else ["(none measured)"]
    lines += ["", f"## Real runs on {p['device']}", "", "`starsim execute scenario.yaml --set targets.0.count=N`:", ""]
    lines += runs_markdown(out, ns)
    lines += ["", "`starsim validate scenario.yaml --sweep targets.0.count=...` (simulator fed each real run's "
              "acceptance and its speed spot checks):", ""]
    lines += validate_markdown(out)
    lines += ["", "Files: `profiles/` (calibrate), `compare.*`, `pair-spec.yaml`, `scenario.yaml`, `runs/`, "
              "`validate/`, `logs/` (one per step), `steps.json`."]
    return "\n".join(lines) + "\n"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def runs_markdown(out: Path, ns: list[int]) -> list[str]:
    lines = ["| run | targets | throughput tok/s | draft utilization | tokens per round | wall s |",
             "|---|---|---|---|---|---|"]
    for n in ns:
        s = _read_json(out / "runs" / f"execute-n{n}" / "summary.json")
        if s is None:
            lines.append(f"| execute-n{n} | {n} | (no run) | | | |")
            continue
        lines.append(f"| execute-n{n} | {n} | {s['throughput_tokens_per_s']:.1f} | "
                     f"{100 * s['draft_utilization']:.1f}% | {s['mean_accepted_tokens']:.2f} | "
                     f"{s['provenance'].get('wall_time_s', float('nan')):.1f} |")
    return lines


def validate_markdown(out: Path) -> list[str]:
    v = _read_json(out / "validate" / "validation.json")
    if v is None:
        return ["(no validation)"]
    lines = ["| point | real tok/s | sim tok/s | sim err | real draft util | sim draft util | sim err | "
             "largest miss |", "|---|---|---|---|---|---|---|---|"]
    f = lambda x, spec, unit="": "" if x is None else format(x, spec) + unit  # noqa: E731
    for p in v["points"]:
        m = {r["metric"]: r for r in p["metrics"]}
        t, u = m["throughput_tokens_per_s"], m["draft_utilization"]
        worst = p["components"][0]["component"] if p["components"] else ""
        lines.append(f"| {p['point']} | {f(t['real'], '.1f')} | {f(t['sim'], '.1f')} | "
                     f"{f(t['sim_err_pct'], '+.1f', '%')} | {f(u['real'], '.1f', '%')} | {f(u['sim'], '.1f', '%')} | "
                     f"{f(u['sim_err_pct'], '+.1f', '%')} | {worst} |")
    ms = v.get("mape_sim_pct") or {}
    if ms.get("throughput_tokens_per_s") is not None:
        lines += ["", f"MAPE of the simulator: throughput {ms['throughput_tokens_per_s']:.1f}%, draft utilization "
                  f"{ms['draft_utilization']:.1f}% (full table: `validate/validation.md`)."]
    return lines


def fits_markdown(profiles: dict) -> list[str]:
    from ..compare import num

    lines = ["| role | op | points | fitted model (s) | CV MAPE |", "|---|---|---|---|---|"]
    for role, (path, prof) in profiles.items():
        for name, op in prof.ops.items():
            form = f"`{op.fit.form}`" if op.fit else "as measured: " + ", ".join(
                f"{num(r[0] * 1e3)} ms gap {r[1] * 1e3:.2f}" for r in sorted(op.rows))
            cv = f"{op.fit.cv_mape_pct:.1f}%" if op.fit else ""
            lines.append(f"| {role} | {name} | {len(op.rows)} | {form} | {cv} |")
        part = prof.provenance.get("interrupted")
        lines.append(f"| {role} | ({path.name}, {prof.provenance.get('wall_s')} s{'; ' + part if part else ''}) "
                     "| | | |")
    return lines


def clock(s: float) -> str:
    return f"{int(s // 60)}m{s % 60:04.1f}s"
