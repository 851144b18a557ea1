"""StarSD on GPUs priced from measured kernel data, N = 1..16 targets (analysis/results/gpu.md,
"GPU deployments on measured kernel data").

For each pair of ``analysis/gpu_pairs.py`` (``scenarios/gpu/SLUG.yaml``: one draft GPU, N
targets of a 16-unit pool, times from aiconfigurator-core's measured kernel tables; see a
scenario's header for what is measured and what is ASSUMED) it runs, through the CLI,

    starsim analyze scenarios/gpu/SLUG.yaml --compare --n 1-16 --json

(per N = ``--set targets.0.count=N``: the closed form, ``starsim.analytic.analyze``, beside
the simulator's summary, the same dict ``starsim run`` writes to summary.json), and for the
assumed-vs-measured table the hand-set reference

    starsim analyze scenarios/starsd_ref_n1.yaml --compare --json

It writes ``analysis/figures/gpu/gpu_star.{png,md,csv}``, puts the section into the results page
and prints the tables; ``--readme`` prints the page's section instead. About a minute on 2 cores.
``--quick`` (N = 1, 2, 4 and ceil(N*), two pairs, 30 simulated seconds) is a smoke test and writes
to runs/gpu-star-quick/.
Rerun with ``python analysis/gpu_star.py [--readme]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

from _cli import write_results  # noqa: E402
from gpu_pairs import PAIRS  # noqa: E402

FIGS = REPO / "analysis" / "figures" / "gpu"
QUICK_OUT = REPO / "runs" / "gpu-star-quick"
ASSUMED = "scenarios/starsd_ref_n1.yaml"
MEASURED = "vicuna7b-eagle-a100_sxm"  # the pair the assumed reference stands for
QUICK_PAIRS = (3, 5)  # a TP-8 target, and the pair the assumed-vs-measured table needs
QUICK_SET = ["duration_s=30", "warmup_s=5"]


class Fail(Exception):
    """A prerequisite is missing or a command failed: one line, exit 2."""


def scenario(pair) -> str:
    return f"scenarios/gpu/{pair.slug}.yaml"


def check_prerequisites(pairs) -> None:
    for p in pairs:
        if not (REPO / scenario(p)).exists():
            raise Fail(f"{scenario(p)} is missing: python analysis/gpu_scenarios.py")
        for role in ("draft", "target"):
            if not (REPO / p.profile(role)).exists():
                raise Fail(f"{p.profile(role)} is missing: python analysis/import_gpu_profiles.py (gpu-db extra)")
    if not (REPO / ASSUMED).exists():
        raise Fail(f"{ASSUMED} is missing")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise Fail("matplotlib is needed: pip install -e .") from None


def analyze(path: str, ns: list[int] | None, overrides: list[str]) -> tuple[dict[int, dict], list[str]]:
    """``starsim analyze PATH --compare [--n NS] --json``: {N: {"analytic", "sim"}} and its stderr lines."""
    cmd = [sys.executable, "-m", "starsim.cli", "analyze", path, "--compare", "--json"]
    if ns:
        cmd += ["--n", ",".join(map(str, ns))]
    for o in overrides:
        cmd += ["--set", o]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if r.returncode:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1].removeprefix("error: ")
        raise Fail(f"starsim analyze {path} failed: {last}")
    out = json.loads(r.stdout)
    recs = {rec["n"]: rec for rec in out} if ns else {out["analytic"]["n_targets"]: out}
    return recs, r.stderr.splitlines()


def stderr_digest(lines) -> list[str]:
    """The runs' stderr, each profile-extrapolation warning once (the run with the largest share),
    not once per run; other lines once each."""
    worst: dict[str, tuple[float, str]] = {}
    for line in lines:
        m = re.match(r"(warning: profile \S+ op \S+?): (\d+) of (\d+) calls", line)
        key, share = (m.group(1), int(m.group(2)) / int(m.group(3))) if m else (line, 0.0)
        if line.strip() and (key not in worst or share > worst[key][0]):
            worst[key] = (share, line)
    return [line + (" (the largest share over the runs)" if line.startswith("warning: profile") else "")
            for _, line in worst.values()]


def ceil_star(n_star: float, pool: int) -> int:
    # rounded first so that an N* of 2.0000001 from float noise is 2, not 3
    return max(1, min(pool, math.ceil(round(n_star, 6))))


def facts(path: str) -> dict:
    """What the tables and sentences quote from a scenario file: the target pool's size, the draft
    tree's depth, and the ASSUMED link and parse/serialize times."""
    import yaml

    sc = yaml.safe_load((REPO / path).read_text())
    link = sc["targets"][0]["link"]
    return {"pool": int(sc["devices"]["gpu"]["count"]), "depth": int(sc["draft"]["tree"]["depth"]),
            "assumed": (float(link["bandwidth_bps"]), float(link["latency_s"]), float(sc["draft"]["parse_time"]),
                        float(sc["draft"]["serialize_time"]))}


def err(a: float, s: float) -> float:
    return 100.0 * (a - s) / s if s else 0.0


def summarize(pair, recs: dict[int, dict], pool: int, depth: int, assumed: tuple) -> dict:
    """The per-pair numbers of the tables, all read from analyze()'s and the summary's keys."""
    a1 = recs[1]["analytic"]
    p = a1["per_target"][0]
    d = p["draft_s"]
    k = ceil_star(a1["n_saturation"], pool)
    ns = sorted(recs)
    errs_u = {n: err(recs[n]["analytic"]["draft_utilization"], recs[n]["sim"]["draft_utilization"]) for n in ns}
    errs_t = {n: err(recs[n]["analytic"]["throughput_tokens_per_s"], recs[n]["sim"]["throughput_tokens_per_s"])
              for n in ns}
    worst_u, worst_t = (max(e, key=lambda n: abs(e[n])) for e in (errs_u, errs_t))
    # the simulator's record of calls outside a profile's measured grid (what its warnings say)
    used = [pr for n in ns for pr in recs[n]["sim"]["provenance"]["profiles"] if pr["calls"]]
    extrap = max(pr["outside_range"] / pr["calls"] for pr in used)
    ctx_lo = min(pr["range"]["context"][0] for pr in used if "context" in pr["range"])
    return {
        "pair": pair, "recs": recs, "k": k, "d": d, "z": p["cycle_alone_s"] - d, "verify": p["verify_s"],
        "link": p["link_s"], "m": a1["mean_accepted_tokens"], "n_star": a1["n_saturation"],
        "pool": pool, "depth": depth, "assumed": assumed, **profile_facts(pair), "extrap": extrap, "ctx_lo": ctx_lo,
        "err_u": errs_u[worst_u], "err_u_n": worst_u, "err_t": errs_t[worst_t], "err_t_n": worst_t,
    }


def longer_run(row: dict, overrides: list[str], factor: int = 5) -> dict:
    """The worst throughput point again at ``factor`` x the duration: is its error sampling noise
    (a short run of few requests) or the model's?"""
    from starsim.scenario import load_scenario

    n, path = row["err_t_n"], scenario(row["pair"])
    duration = load_scenario(REPO / path, overrides).duration_s
    if not duration:
        return {}
    recs, _ = analyze(path, [n], [*overrides, f"duration_s={factor * duration:g}"])
    a, s = recs[n]["analytic"], recs[n]["sim"]
    return {"duration": duration, "longer": factor * duration, "err": err(a["throughput_tokens_per_s"],
            s["throughput_tokens_per_s"]), "requests": row["recs"][n]["sim"]["requests_completed"]}


def at(row: dict, n: int, side: str, key: str) -> float:
    return row["recs"][n][side][key]


def main_table(rows: list[dict]) -> str:
    lines = [
        "| pair, GPU | d ms | z ms | N* | U(1) | idle gap ms, N=1 → ceil(N*) | tok/s, N=1 → ceil(N*) "
        "| TPOT ms, N=1 → ceil(N*) | max err U / tok/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        k = r["k"]
        g1, gk = at(r, 1, "sim", "draft_idle_gap_mean_s"), at(r, k, "sim", "draft_idle_gap_mean_s")
        red = 100 * (1 - gk / g1) if g1 else 0.0
        tput = " → ".join(f"{at(r, n, 'sim', 'throughput_tokens_per_s'):.0f} "
                          f"({at(r, n, 'analytic', 'throughput_tokens_per_s'):.0f})" for n in (1, k))
        tpot = " → ".join(f"{1e3 * at(r, n, 'sim', 'tpot_mean_s'):.2f} "
                          f"({1e3 * at(r, n, 'analytic', 'tpot_mean_s'):.2f})" for n in (1, k))
        u1 = " ".join(f"{100 * at(r, 1, side, 'draft_utilization'):.1f}%" for side in ("sim", "analytic"))
        u1 = u1.replace(" ", " (", 1) + ")"
        lines.append(
            f"| {r['pair'].label} | {1e3 * r['d']:.2f} | {1e3 * r['z']:.2f} | {r['n_star']:.2f} | {u1}"
            f" | {1e3 * g1:.2f} → {1e3 * gk:.3f} at N={k} (-{red:.1f}%) | {tput} at N={k} | {tpot} | "
            f"{r['err_u']:+.2f}% / {r['err_t']:+.2f}% |"
        )
    return "\n".join(lines)


def main_legend() -> str:
    return ("d: draft time per round; z: the target side per round (verification, both link hops with "
            "parse/serialize, and prefill spread over the rounds), so N* = 1 + z/d (closed form). Simulated "
            "values, the closed form in parentheses; the idle gap is the simulator's mean. Max err: the largest "
            "(closed - sim) / sim over the N run.")


def assumed_table(ref: dict, meas: dict) -> tuple[str, dict]:
    """Assumed (starsd_ref_n1.yaml) vs measured database (the Vicuna-7B/EAGLE pair at N=1)."""
    vals = {}
    for name, a, s in (("assumed", ref["analytic"], ref["sim"]), ("measured", meas["analytic"], meas["sim"])):
        p = a["per_target"][0]
        vals[name] = {
            "d": 1e3 * p["draft_s"], "z": 1e3 * (p["cycle_alone_s"] - p["draft_s"]), "verify": 1e3 * p["verify_s"],
            "link": 1e3 * p["link_s"], "m": a["mean_accepted_tokens"], "n_star": a["n_saturation"],
            "u": 100 * s["draft_utilization"], "u_cf": 100 * a["draft_utilization"],
            "tput": s["throughput_tokens_per_s"], "tput_cf": a["throughput_tokens_per_s"],
            "tpot": 1e3 * s["tpot_mean_s"], "tpot_cf": 1e3 * a["tpot_mean_s"],
        }
    spec = [("d", "draft round d, ms", "{:.2f}"), ("z", "target side z, ms", "{:.2f}"),
            ("verify", "  of which verification, ms", "{:.2f}"),
            ("link", "  of which link + parse/serialize, ms", "{:.3f}"), ("m", "tokens per round", "{:.2f}"),
            ("n_star", "N*", "{:.2f}"), ("u", "U(1), sim (closed form)", "{:.1f}%"),
            ("tput", "throughput, 1 target, tok/s, sim (closed form)", "{:.0f}"),
            ("tpot", "TPOT, 1 target, ms, sim (closed form)", "{:.2f}")]
    lines = [f"| Vicuna-7B + EAGLE, A100 | assumed (`{ASSUMED}`) | measured database "
             f"(`scenarios/gpu/{MEASURED}.yaml`, N=1) | measured / assumed |", "|---|---|---|---|"]
    for key, label, fmt in spec:
        cells = []
        for name in ("assumed", "measured"):
            v = vals[name]
            cell = fmt.format(v[key])
            if key + "_cf" in v:
                cell += " (" + fmt.format(v[key + "_cf"]) + ")"
            cells.append(cell)
        ratio = vals["measured"][key] / vals["assumed"][key] if vals["assumed"][key] else math.nan
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {ratio:.2f} |")
    return "\n".join(lines), vals


def figure(rows: list[dict], path: Path, command: str) -> None:
    """Per pair, throughput over N above draft utilization over N (two axes rather than twin axes:
    below N* the two curves are proportional and would lie on each other)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(rows))
    grid = math.ceil(len(rows) / cols)
    fig = plt.figure(figsize=(4.3 * cols, 3.7 * grid + 1.0))
    # per row of pairs: throughput, utilization, then a spacer row, so each pair's two axes sit together
    gs = fig.add_gridspec(3 * grid - 1, cols, height_ratios=([1.4, 1, 0.45] * grid)[:-1], hspace=0.12, wspace=0.28,
                          left=0.06, right=0.99, top=1 - 0.75 / fig.get_figheight(), bottom=0.95 / fig.get_figheight())
    handles = {}
    for i in range(grid * cols):
        if i >= len(rows):
            continue
        top = fig.add_subplot(gs[3 * (i // cols), i % cols])
        bottom = fig.add_subplot(gs[3 * (i // cols) + 1, i % cols], sharex=top)
        top.tick_params(labelbottom=False)
        r = rows[i]
        ns = sorted(r["recs"])
        for ax, key, scale, color, what in ((top, "throughput_tokens_per_s", 1, "tab:blue", "throughput"),
                                            (bottom, "draft_utilization", 100, "tab:orange", "draft utilization")):
            cf = [scale * at(r, n, "analytic", key) for n in ns]
            sim = [scale * at(r, n, "sim", key) for n in ns]
            handles[f"{what}, closed form"] = ax.plot(ns, cf, color=color, lw=1.5)[0]
            handles[f"{what}, simulated"] = ax.plot(ns, sim, "o", color=color, ms=3.5, mfc="none", mew=1.1)[0]
            ax.axvline(r["n_star"], color="0.45", lw=0.9, ls=":")
            ax.set_ylim(0, max(cf + sim) * 1.15)
            ax.grid(color="#eeeeee")
            ax.tick_params(labelsize=7)
        right = r["n_star"] < 0.7 * max(ns)  # the label beside the line, inside the axes
        top.text(r["n_star"] + (0.3 if right else -0.3), 0.08, f"N* = {r['n_star']:.2f}", ha="left" if right else
                 "right", transform=top.get_xaxis_transform(), fontsize=8, color="0.3")
        top.set_title(r["pair"].label.replace(" (StarSD reference)", ""), fontsize=9)
        top.set_ylabel("tok/s", fontsize=8)
        bottom.set_ylabel("draft util. %", fontsize=8)
        bottom.set_xlabel("targets N", fontsize=8)
        bottom.set_xlim(0.5, max(ns) + 0.5)
        bottom.set_xticks([n for n in (1, 2, 4, 6, 8, 10, 12, 14, 16) if n <= max(ns)])
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=4, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.2 / fig.get_figheight()))
    fig.suptitle("One draft GPU, N targets, on measured-database kernel times (aiconfigurator-core)\n"
                 "lines: closed form; markers: simulator; dotted: N*", fontsize=10)
    fig.text(0.01, 0.005, f"{command} (kernel time only; links, parse/serialize and acceptance ASSUMED, "
             "see scenarios/gpu/*.yaml)", fontsize=7, color="0.4")
    fig.savefig(path, dpi=130)
    plt.close(fig)


def profile_facts(pair) -> dict:
    """From the pair's profiles' provenance: the database's GPU entry and the share of the draft
    round's and the verification's kernel time priced from measured rows."""
    import yaml

    draft, target = (yaml.safe_load((REPO / pair.profile(role)).read_text())["provenance"]
                     for role in ("draft", "target"))
    return {"gpu": draft.get("gpu", {}), "measured": (draft["measured_fraction"]["draft_round"],
                                                      target["measured_fraction"]["verify"])}


def profile_note(pair) -> str:
    """Which profiles a pair ran on: file names, the package and data versions their provenance names."""
    import yaml

    head = yaml.safe_load((REPO / pair.profile("draft")).read_text())["provenance"]
    return (f"{Path(pair.profile('draft')).name}, {Path(pair.profile('target')).name} "
            f"({head.get('package')} {head.get('package_version')}, data {head.get('data_version')}, "
            f"{head.get('backend')} {head.get('backend_version')})")


def write_csv(rows: list[dict], path: Path, provenance: str) -> None:
    keys = ("draft_utilization", "draft_idle_gap_mean_s", "throughput_tokens_per_s", "tpot_mean_s")
    with path.open("w", newline="") as f:
        f.write(f"# {provenance}\n")
        w = csv.writer(f)
        w.writerow(["pair", "label", "n", "d_s", "z_s", "verify_s", "link_s", "tokens_per_round", "n_star",
                    *(f"{k}_{side}" for k in keys for side in ("closed", "sim")), "draft_profile", "target_profile"])
        for r in rows:
            p = r["pair"]
            for n in sorted(r["recs"]):
                vals = [f"{at(r, n, side, k):.6g}" for k in keys for side in ("analytic", "sim")]
                w.writerow([p.slug, p.label, n, f"{r['d']:.6g}", f"{r['z']:.6g}", f"{r['verify']:.6g}",
                            f"{r['link']:.6g}", f"{r['m']:.4g}", f"{r['n_star']:.6g}", *vals, p.profile("draft"),
                            p.profile("target")])


def _names(pair) -> tuple[str, str, str]:
    """(target, draft, GPU) from a pair's label "TARGET / DRAFT, GPU (note)"."""
    models, gpu = pair.label.split(", ", 1)
    target, draft = models.split(" / ")
    return target, draft, gpu.split(" (")[0]


def _span(lo: float, hi: float, fmt: str) -> str:
    a, b = format(lo, fmt), format(hi, fmt)
    return a if a == b else f"{a}-{b}"


def _pct(new: float, old: float) -> str:
    return f"{100 * abs(new / old - 1):.0f}%"


def findings(rows: list[dict], vals: dict, recheck: dict) -> list[str]:
    """The README's sentences, each from the numbers just computed."""
    out = []
    sim = lambda r, n, key: at(r, n, "sim", key)  # noqa: E731
    by = sorted(rows, key=lambda r: r["n_star"])
    top, rest = by[-1], by[:-1]
    reds = [100 * (1 - sim(r, r["k"], "draft_idle_gap_mean_s") / sim(r, 1, "draft_idle_gap_mean_s")) for r in rows]
    gains = [sim(r, r["k"], "throughput_tokens_per_s") / sim(r, 1, "throughput_tokens_per_s") for r in rows]
    tpot = max(rows, key=lambda r: sim(r, r["k"], "tpot_mean_s") / sim(r, 1, "tpot_mean_s"))
    t_up = sim(tpot, tpot["k"], "tpot_mean_s") / sim(tpot, 1, "tpot_mean_s") - 1
    lead = (f"The draft saturates at N* = {top['n_star']:.1f} targets with {top['pair'].label.split(',')[0]} "
            f"(d = {1e3 * top['d']:.2f} ms per round against z = {1e3 * top['z']:.1f} ms)")
    if rest:
        whose = "pairs, whose separate draft models take" if len(rest) > 1 else "pair, whose separate draft model takes"
        lead += (f", but at {_span(rest[0]['n_star'], rest[-1]['n_star'], '.1f')} for the other {whose} "
                 f"{_span(1e3 * min(r['d'] for r in rest), 1e3 * max(r['d'] for r in rest), '.1f')} ms per tree round")
    out.append(lead + f". From one target to ceil(N*), the simulated mean idle gap falls by "
               f"{_span(min(reds), max(reds), '.0f')}% and throughput rises {_span(min(gains), max(gains), '.2f')}x; "
               "TPOT grows by up to "
               f"{100 * t_up:.0f}% ({tpot['pair'].label.split(' (StarSD')[0]}, where ceil("
               f"{tpot['n_star']:.2f}) = {tpot['k']} is past saturation).")
    # a model pair whose draft round outlasts the target side on every GPU here: N* < 2
    specs = {}
    for r in rows:
        specs.setdefault(r["pair"].spec, []).append(r)
    for group in specs.values():
        if all(r["d"] > r["z"] for r in group):
            target, draft, _ = _names(group[0]["pair"])
            per = "; ".join(
                f"{_names(r['pair'])[2]}: d = {1e3 * r['d']:.1f} ms against z = {1e3 * r['z']:.1f} ms, "
                f"U(1) = {100 * sim(r, 1, 'draft_utilization'):.0f}%, N* = {r['n_star']:.2f}, "
                f"{sim(r, r['k'], 'throughput_tokens_per_s') / sim(r, 1, 'throughput_tokens_per_s'):.2f}x the "
                f"throughput at N = {r['k']}" for r in group)
            gpus = group[0]["pair"].tp
            side = f"verification on {gpus} GPUs" if gpus > 1 else "verification"
            out.append(f"{draft} cannot keep up with {target}: its tree round on one GPU takes longer than the "
                       f"target side ({side}, link and parse/serialize), so one target keeps it busy most of the "
                       f"time and a second saturates it ({per}).")
    # the same pair on H100 and H200 (same compute, more memory bandwidth): how d and z move
    moves = []
    for group in specs.values():
        on = {r["pair"].system: r for r in group}
        if "h100_sxm" in on and "h200_sxm" in on:
            a, b = on["h100_sxm"], on["h200_sxm"]
            target, draft, _ = _names(a["pair"])
            cross = " (the draft round now outlasts the target side)" if a["d"] <= a["z"] and b["d"] > b["z"] else ""
            moves.append(f"{draft}'s round by {_pct(b['d'], a['d'])} and {target}'s side by {_pct(b['z'], a['z'])}, "
                         f"N* {a['n_star']:.2f} -> {b['n_star']:.2f}{cross}")
    if moves:
        h100, h200 = (next(r["gpu"] for r in rows if r["pair"].system == s) for s in ("h100_sxm", "h200_sxm"))
        same = h100.get("bfloat16_tc_flops") == h200.get("bfloat16_tc_flops")
        what = (f"{'the same bf16 tensor FLOPS, ' if same else ''}{h200['mem_bw'] / h100['mem_bw']:.2f}x the memory "
                "bandwidth in the database's system entries")
        out.append(f"From H100 to H200 SXM ({what}) the database shortens " + "; ".join(moves) + ".")
    wu = max(rows, key=lambda r: abs(r["err_u"]))
    wt = max(rows, key=lambda r: abs(r["err_t"]))
    ns = sorted({n for r in rows for n in r["recs"]})
    text = (f"Over N = {ns[0]}..{ns[-1]} the closed form stays within {abs(wu['err_u']):.1f}% of the simulator on "
            f"draft utilization, worst at N = {wu['err_u_n']} for {wu['pair'].label.split(',')[0]} (N* = "
            f"{wu['n_star']:.2f}: near N*, random round times queue where mean times do not), and within "
            f"{abs(wt['err_t']):.1f}% on throughput, worst at N = {wt['err_t_n']} for {_names(wt['pair'])[0]} on "
            f"{_names(wt['pair'])[2]} (N* = {wt['n_star']:.2f})")
    if recheck:
        noise = abs(recheck["err"]) < abs(wt["err_t"]) / 2
        text += (f", where the {recheck['duration']:g} s run completes {recheck['requests']} requests; at "
                 f"{recheck['longer']:g} s the error is {recheck['err']:+.2f}%"
                 + (", so that one is the short run's sampling noise" if noise else
                    ", so a longer run does not remove it"))
    out.append(text + ".")
    a, m = vals["assumed"], vals["measured"]
    out.append(
        "Against the reference scenarios' hand-set times, the database prices Vicuna-7B's EAGLE round at "
        f"{m['d']:.2f} ms ({m['d'] / a['d']:.2f}x the assumed {a['d']:.2f} ms) and its verification at "
        f"{m['verify']:.1f} ms ({m['verify'] / a['verify']:.2f}x), so N* moves from {a['n_star']:.1f} to "
        f"{m['n_star']:.1f} and one target's throughput from {a['tput']:.0f} to {m['tput']:.0f} tok/s "
        f"({m['tput'] / a['tput']:.2f}x; {m['m'] / a['m']:.2f}x of it from the acceptance: {m['m']:.2f} tokens "
        f"per round, EAGLE-2's published figure, against the assumed {a['m']:.2f}).")
    return out


def caveat(rows: list[dict]) -> str:
    net = {r["assumed"] for r in rows}
    bw, lat, parse, ser = net.pop() if len(net) == 1 else (None,) * 4
    links = f"the links ({bw / 1e9:g} Gb/s, {1e3 * lat:g} ms one way), the draft's parse/serialize ({1e6 * parse:g}/" \
        f"{1e6 * ser:g} us)" if bw else "the links, the draft's parse/serialize"
    text = ("Caveat: these are kernel times only, with no launch, scheduler or framework overhead; "
            f"{links}, the acceptance curves (only Vicuna-7B's total is a published figure) and the prompt/output "
            "lengths are ASSUMED (see each scenario's header).")
    depths = {r["depth"] for r in rows}
    if len(depths) == 1 and all(r["z"] / r["d"] > 1 / r["depth"] for r in rows):
        # N* = 1 + z/d; an overhead o per forward adds depth * o to a draft round (one forward per
        # level, gpu_db.OP_FORWARDS) and o to a verification, which lowers z/d whenever z/d > 1/depth
        text += (f" A per-forward overhead falls {depths.pop()} times on a draft round (one forward per tree level) "
                 "and once on a verification, so it would lower every N* here.")
    shares = [f for r in rows for f in r["measured"]]
    text += (f" Of the draft rounds' and verifications' kernel time, "
             f"{_span(100 * min(shares), 100 * max(shares), '.0f')}% is priced from measured rows, the rest from "
             "aiconfigurator's estimates (each profile's provenance).")
    ext = max(rows, key=lambda r: r["extrap"])
    if ext["extrap"] > 0:
        text += (f" Rounds at contexts under {min(r['ctx_lo'] for r in rows):g} tokens (the first of short prompts) "
                 f"lie below the tables' measured contexts and are extrapolated: at most {100 * ext['extrap']:.1f}% "
                 "of a run's calls.")
    return text


def render(rows, table2, vals, recheck, args, figure_link: str, provenance: str, written: str) -> tuple[str, str]:
    """The figure's markdown (tables) and the results page's section (``written``: the folder the files go to;
    ``figure_link``: the figure as the page links it)."""
    md = "\n\n".join([f"<!-- {provenance} -->", main_table(rows), main_legend(), table2])
    command = "python analysis/gpu_star.py" + (" --quick" if args.quick else "")
    ns = sorted({n for r in rows for n in r["recs"]})
    pool = max(r["pool"] for r in rows)
    n_arg = ",".join(map(str, ns)) if args.quick else f"1-{pool}"
    wrap = lambda text, lead="": textwrap.fill(text, 92, initial_indent=lead,  # noqa: E731
                                               subsequent_indent=" " * len(lead), break_on_hyphens=False)
    readme = "\n".join([
        "## GPU deployments on measured kernel data",
        "",
        wrap(f"`{command}` (`--readme` prints this section) runs each shipped GPU pair (`analysis/gpu_pairs.py`, "
             f"`scenarios/gpu/*.yaml`: one draft GPU, N = {ns[0]}..{ns[-1]} targets of a {pool}-unit pool, times "
             "priced from NVIDIA's measured kernel tables in aiconfigurator-core) through the closed form and the "
             f"simulator, and writes `{written}/gpu_star.{{png,md,csv}}`; per pair:"),
        "",
        "```bash",
        f"starsim analyze scenarios/gpu/SLUG.yaml --compare --n {n_arg} --json",
        "```",
        "",
        main_table(rows),
        "",
        wrap(main_legend()),
        "",
        f"![throughput and draft utilization over N per GPU pair, closed form and simulator]({figure_link})",
        "",
        wrap("The reference scenarios' hand-set (ASSUMED) times beside the measured database, one target "
             f"(`starsim analyze {ASSUMED} --compare`):"),
        "",
        table2,
        "",
        *(wrap(s, "- ") for s in findings(rows, vals, recheck)),
        "",
        wrap(caveat(rows)),
        "",
    ])
    return md, readme


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke test: N = 1,2,4 (+ ceil N*), two pairs, 30 s runs")
    ap.add_argument("--readme", action="store_true", help="print the results page's section instead of the tables")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override for every run")
    ap.add_argument("--out", type=Path, help="output directory (default analysis/figures/gpu; runs/gpu-star-quick "
                    "with --quick)")
    ap.add_argument("--jobs", type=int, default=2, help="scenarios run at once (default 2)")
    args = ap.parse_args(argv)
    pairs = [PAIRS[i] for i in QUICK_PAIRS] if args.quick else list(PAIRS)
    out_dir = args.out or (QUICK_OUT if args.quick else FIGS)
    overrides = (QUICK_SET if args.quick else []) + args.set
    try:
        check_prerequisites(pairs)
        t0 = time.perf_counter()
        pools = {p.slug: facts(scenario(p))["pool"] for p in pairs}

        def job(key):
            if key == "assumed":
                return analyze(ASSUMED, None, overrides)
            p = next(q for q in pairs if q.slug == key)
            ns = [n for n in (1, 2, 4) if n <= pools[key]] if args.quick else list(range(1, pools[key] + 1))
            recs, err_lines = analyze(scenario(p), ns, overrides)
            k = ceil_star(recs[1]["analytic"]["n_saturation"], pools[key])
            if k not in recs:  # --quick: ceil(N*) is a row of the table, so run it too
                more, more_err = analyze(scenario(p), [k], overrides)
                recs.update(more)
                err_lines += more_err
            return recs, err_lines

        keys = [p.slug for p in pairs] + ["assumed"]  # pairs include MEASURED, --quick too
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
            results = dict(zip(keys, ex.map(job, keys)))
    except Fail as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    for line in stderr_digest(line for key in keys for line in results[key][1]):
        print(line, file=sys.stderr)

    rows = [summarize(p, results[p.slug][0], **facts(scenario(p))) for p in pairs]
    table2, vals = assumed_table(results["assumed"][0][1], results[MEASURED][0][1])
    try:
        recheck = longer_run(max(rows, key=lambda r: abs(r["err_t"])), overrides)
    except Fail as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    out_dir.mkdir(parents=True, exist_ok=True)
    version = rows[0]["recs"][1]["sim"]["provenance"]["starsim_version"]
    command = "python analysis/gpu_star.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    profiles = "; ".join(profile_note(p) for p in pairs)
    provenance = (f"{stamp}, `{command}`, starsim {version}, {wall:.0f} s; "
                  f"profiles (models/profiles/): {profiles}")
    figure(rows, out_dir / "gpu_star.png", command)
    write_csv(rows, out_dir / "gpu_star.csv", provenance)
    page = out_dir == FIGS  # the shipped figure, linked from analysis/results/gpu.md
    link = "../figures/gpu/gpu_star.png" if page else str(out_dir / "gpu_star.png")
    written = "analysis/figures/gpu" if page else str(out_dir)
    md, readme = render(rows, table2, vals, recheck, args, link, provenance, written)
    (out_dir / "gpu_star.md").write_text(md + "\n")
    if page and not (args.quick or args.set):
        write_results("gpu", "gpu-star", readme.split("\n", 2)[2], "python analysis/gpu_star.py")
    if args.readme:
        print(readme, end="")
    else:
        print(md)
    print(f"\nwrote {out_dir}/gpu_star.{{png,md,csv}} in {wall:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
