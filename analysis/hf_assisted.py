"""Hugging Face assisted generation beside starsim: one target and its own draft on one core.

A third-party reference for the one_for_one mode. Transformers' assisted generation
(``target.generate(ids, assistant_model=draft)``, greedy, the assistant's
``num_assistant_tokens`` k with the ``constant`` schedule and no confidence threshold, so
it drafts k tokens every round) runs the offline pair in this process, pinned to the core
scenarios/real_cpu_one_for_one_chain.yaml declares, with one torch thread, on that file's
prompts (real_cpu_declared_n2.yaml's: 12 held-out stdlib slices of 32-128 tokens, 96 output
tokens each). At each k = 2, 4, 6 the script then simulates the file (mode ``one_for_one``)
with a chain of k (``draft.tree: {top_k: 1, depth: k, tokens: k}``) and the acceptance HF
measured at that k, twice:

- on HF's own measured times (:func:`hf_costs`): does starsim's one_for_one model, given a
  third-party decoder's costs, predict its tokens/s?
- on starsim's profiles (the file's; the draft's round from the chain-k profile,
  ``models/profiles/cpu-declared/chain-K/``): a model of starsim's own stack, held against HF
  and against starsim's real run;

and runs the same scenario for real (starsim's backend: the target process serves its own
draft server over loopback, both on that core).

How HF's rounds are counted: the script wraps the candidate generator HF builds for each
``generate`` call. Each ``get_candidates`` call is one round's draft (the assistant's own
``generate`` of k tokens, timed whole; forward hooks on the assistant time its forwards
inside it); a forward hook on the target times its one forward a round (the verify; the
first round's also encodes the prompt, as HF has no separate prefill); and
``update_candidate_strategy(input_ids, scores, num_matches)`` gives the round's accepted
draft tokens, ``num_matches`` (after HF's cut at the output length or an end of sequence).
Every round emits ``num_matches + 1`` tokens, so a request's tokens are its rounds plus
its accepted tokens. Acceptance is then starsim's: the marginal curve
``P(accepted >= j)``, j = 1..k, over every round (:func:`starsim.metrics.acceptance_marginal`),
and the mean tokens per round, bonus token included (``mean_accepted_tokens``).

The tables (into analysis/results/real.md): per k, HF's tokens/s and acceptance, both
simulations' and the real run's tokens/s and their errors against HF's (the profile-based
one's against the real run's too); then where the time goes, per round after a request's
first: draft, verify, the rest (HF: its Python around the target's forward; starsim's real
backend: the loopback messages to its own draft server and the time between rounds) and each
run's time per request outside those rounds (the prompt, set-up). A measurement on a shared
machine: the numbers move with its load.

Run: ``python analysis/hf_assisted.py [--ks 2,4,6] [--prompts 12] [--output 96] [--seeds 10]
[--no-real] [--no-write]`` (needs torch, transformers and ``starsim models build-pair``; a few minutes).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _cli import REPO, write_results  # analysis/ is on sys.path when a script runs

SCENARIO = "scenarios/real_cpu_one_for_one_chain.yaml"
KEY = "hf-assisted"
CHAINS = "models/profiles/cpu-declared"  # chain-K/: the draft's draft_round timed on a chain of K
DRAFT_PROFILE = "stdlib-pair.draft.cpu-amd-epyc-2-logical.float32.yaml"


# --------------------------------------------------------------------------- HF's assisted generation


@dataclass
class HFRound:
    """One round of HF's assisted generation: the assistant's draft and the target's verify."""

    start: float  # get_candidates called (perf_counter)
    draft_s: float = 0.0  # the whole get_candidates call: the assistant's generate of k tokens
    forward_s: float = 0.0  # of which the assistant's forwards
    drafted: int = 0  # the assistant's forwards (k; fewer where HF caps the draft at the output length)
    verify_s: float = 0.0  # the target's forward
    verifies: int = 0  # target forwards in the round (1)
    accepted: int = -1  # num_matches: draft tokens kept (-1: not reported)


@dataclass
class HFRequest:
    prompt: list[int]
    output: list[int]
    start: float
    end: float
    rounds: list[HFRound] = field(default_factory=list)


@dataclass
class HFRun:
    """Every request of one k, in order, and the loop's wall time."""

    k: int
    requests: list[HFRequest]
    wall_s: float

    @property
    def tokens(self) -> int:
        return sum(len(r.output) for r in self.requests)

    @property
    def accepted(self) -> list[int]:
        return [x.accepted for r in self.requests for x in r.rounds]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    def merged(self, other: HFRun) -> HFRun:
        """Both runs' requests as one run (a rerun of the same prompts: the same rounds, other times)."""
        return HFRun(self.k, self.requests + other.requests, self.wall_s + other.wall_s)

    def marginal(self) -> list[float]:
        """P(accepted >= j), j = 1..k, over every round (starsim's acceptance_marginal)."""
        import numpy as np

        from starsim.metrics import acceptance_marginal

        acc = np.asarray(self.accepted)
        return acceptance_marginal(acc, np.full(len(acc), self.k))

    def tokens_per_round(self) -> float:
        acc = self.accepted
        return 1.0 + sum(acc) / len(acc)

    def steady(self) -> list[tuple[HFRound, float]]:
        """Every round after its request's first (the first also encodes the prompt), with its
        whole time: from its draft's start to the next round's (the last: to the request's end)."""
        return [(x, (r.rounds[i + 1].start if i + 1 < len(r.rounds) else r.end) - x.start)
                for r in self.requests for i, x in enumerate(r.rounds) if i > 0]

    def outside(self) -> list[float]:
        """Each request's time outside its steady rounds: from its ``generate`` call to its second
        round's draft (set-up, and the first round: the prompt through both models, a draft, a
        verify), plus an equal share of the loop's time between requests; they sum to the run's
        wall time less its steady rounds."""
        heads = [(r.rounds[1].start if len(r.rounds) > 1 else r.end) - r.start for r in self.requests]
        gap = (self.wall_s - sum(r.end - r.start for r in self.requests)) / len(self.requests)
        return [h + gap for h in heads]

    def components(self) -> dict[str, float]:
        """Means over the steady rounds (:meth:`steady`): draft, the assistant's forwards in it,
        verify, the whole round, tokens per round; and the mean of :meth:`outside`
        (``per_request_s``)."""
        steady = self.steady()
        n = len(steady)
        mean = (lambda f: sum(f(x, c) for x, c in steady) / n) if n else (lambda f: float("nan"))
        cycle = mean(lambda x, c: c)
        return {"draft_s": mean(lambda x, c: x.draft_s), "forward_s": mean(lambda x, c: x.forward_s),
                "verify_s": mean(lambda x, c: x.verify_s), "cycle_s": cycle,
                "tokens_per_round": mean(lambda x, c: x.accepted + 1),
                "per_request_s": (self.wall_s - n * cycle) / len(self.requests) if n else float("nan")}


class _Observer:
    """Hooks and wrappers that cut HF's assisted generation into rounds (module docstring)."""

    def __init__(self):
        self.rounds: list[HFRound] = []
        self._t = 0.0

    def wrap_generator(self, make):
        """``model._get_candidate_generator``, observed: the generator's draft and its verdicts."""

        def observed(*args, **kwargs):
            gen = make(*args, **kwargs)
            get, update = gen.get_candidates, gen.update_candidate_strategy

            def get_candidates(*a, **kw):
                rnd = HFRound(start=time.perf_counter())
                self.rounds.append(rnd)
                try:
                    return get(*a, **kw)
                finally:
                    rnd.draft_s = time.perf_counter() - rnd.start

            def update_candidate_strategy(input_ids, scores, num_matches):
                self.rounds[-1].accepted = int(num_matches)
                return update(input_ids, scores, num_matches)

            gen.get_candidates, gen.update_candidate_strategy = get_candidates, update_candidate_strategy
            return gen

        return observed

    def start(self, *_):
        self._t = time.perf_counter()

    def draft_done(self, *_):
        if self.rounds:
            self.rounds[-1].forward_s += time.perf_counter() - self._t
            self.rounds[-1].drafted += 1

    def verify_done(self, *_):
        if self.rounds:
            self.rounds[-1].verify_s += time.perf_counter() - self._t
            self.rounds[-1].verifies += 1


def hf_assisted(target, draft, prompts: list[tuple[list[int], int]], k: int) -> HFRun:
    """HF's greedy assisted generation of each ``(prompt ids, output tokens)`` in turn, the
    assistant drafting ``k`` tokens a round, observed round by round (module docstring). Runs
    where the caller runs (pin it first); one untimed warm-up call comes before the timed ones."""
    import torch
    from transformers.utils import logging as hf_logging

    cfg = draft.generation_config
    keep = {a: getattr(cfg, a, None) for a in
            ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")}
    # a falsy threshold adds no confidence stop: the assistant always drafts k (HF reads these
    # from the assistant's own generation config)
    cfg.num_assistant_tokens, cfg.num_assistant_tokens_schedule, cfg.assistant_confidence_threshold = k, "constant", 0.0
    obs = _Observer()
    hooks = [target.register_forward_pre_hook(obs.start), target.register_forward_hook(obs.verify_done),
             draft.register_forward_pre_hook(obs.start), draft.register_forward_hook(obs.draft_done)]
    target._get_candidate_generator = obs.wrap_generator(target._get_candidate_generator)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # HF's notes on its own assistant's generate call, once a round

    def generate(ids: list[int], n: int):
        x = torch.tensor([ids])
        with torch.inference_mode():
            return target.generate(x, attention_mask=torch.ones_like(x), assistant_model=draft, do_sample=False,
                                   num_beams=1, max_new_tokens=n)[0, len(ids):].tolist()

    try:
        generate(prompts[0][0], 8)  # warm-up: first-call costs are not HF's steady rate
        requests = []
        t0 = time.perf_counter()
        for ids, n in prompts:
            obs.rounds = []
            start = time.perf_counter()
            out = generate(ids, n)
            requests.append(HFRequest(list(ids), out, start, time.perf_counter(), obs.rounds))
        wall = time.perf_counter() - t0
    finally:
        hf_logging.set_verbosity(verbosity)
        del target._get_candidate_generator  # the class's method again
        for h in hooks:
            h.remove()
        for a, v in keep.items():
            setattr(cfg, a, v)
    return HFRun(k, requests, wall)


# --------------------------------------------------------------------------- starsim's runs


def starsim_components(result) -> dict[str, float]:
    """:meth:`HFRun.components` of a starsim run (simulated or real), from its records: the
    hops of its rounds (:func:`starsim.metrics.hop_means`) and its time per request outside
    them (the run's span, less its rounds, per request)."""
    from starsim.metrics import hop_means

    h, s = hop_means(result.records), result.summary
    cycle = h["round_s"] + (h["between_rounds_s"] or 0.0)
    tokens = float(result.records.requests["generated_tokens"].sum())
    span = tokens / s["throughput_tokens_per_s"]
    return {"draft_s": h["draft_s"], "verify_s": h["verify_s"], "cycle_s": cycle,
            "tokens_per_round": s["mean_accepted_tokens"],
            "per_request_s": (span - s["rounds"] * cycle) / s["requests_completed"]}


def rate(runs: list) -> float:
    """The mean tokens/s of starsim runs (a simulation's seeds, or one real run)."""
    return sum(r.summary["throughput_tokens_per_s"] for r in runs) / len(runs)


def mean_components(runs: list) -> dict[str, float]:
    """:func:`starsim_components` of starsim runs, each averaged over them."""
    each = [starsim_components(r) for r in runs]
    return {key: sum(c[key] for c in each) / len(each) for key in each[0]}


def _speed(prof) -> str:
    """The reference matmul time a profile's op was measured beside (its core's speed then)."""
    ref = prof.file.provenance.get("reference_matmul_s", {}).get("median_beside_s")
    return f"{1e3 * ref:.2f} ms" if ref else "not recorded"


def _profile_speed(sc) -> str:
    """The reference matmul time the target's profile was measured beside."""
    return _speed(sc.targets[0].verify_time)


def chain_profile(k: int) -> str:
    """The draft's chain-``k`` profile (``draft_round`` timed on a chain of k), relative to the
    scenario file as the file writes it."""
    return f"../{CHAINS}/chain-{k}/{DRAFT_PROFILE}"


def chain(k: int, curve: list[float] | None = None, *, profile: bool = True) -> dict:
    """The scenario overrides of a chain of ``k``: the tree, the chain-``k`` profile of the
    draft's round (unless ``profile`` is false: another ``draft.round_time`` comes with it) and
    HF's measured ``curve`` at that k."""
    tree = {"top_k": 1, "depth": k, "tokens": k}
    out: dict = {"draft.tree": tree}
    if profile:
        out["draft.round_time.path"] = chain_profile(k)
    if curve is not None:
        out["acceptance"] = {"kind": "marginal", "curve": curve, "tree": tree}
    return out


def hf_costs(hf: HFRun) -> dict:
    """The scenario overrides that price ``one_for_one`` with HF's own times at its k, each as the
    measured samples (``empirical``: drawn with replacement, whatever the tokens or context):

    - ``draft.round_time``: each steady round's draft, the assistant's whole ``generate`` call
      (its forwards and the Python around them);
    - the target's ``verify_time``: the rest of each steady round, from the draft's end to the
      next round's start (the target's forward and HF's Python around it: the acceptance, the
      cache cut, the stopping checks);
    - its ``prefill_time``: each request's time outside its steady rounds (:meth:`HFRun.outside`:
      set-up and the first round, which HF has in place of a prefill).

    A simulated round is then HF's steady round (draft + verify, nothing between); what the
    simulator adds is its own count of rounds: the acceptance curve, and its first token
    from the prefill where HF's first round emits the accepted tokens and one more."""
    steady = hf.steady()
    # HF's measured drafts are as cold as they were: no warm/cold curve on top of them
    return {"draft.round_time": {"kind": "empirical", "samples": [x.draft_s for x, _ in steady]},
            "draft.idle_slowdown": False,
            "targets.0.verify_time": {"kind": "empirical", "samples": [c - x.draft_s for x, c in steady]},
            "targets.0.prefill_time": {"kind": "empirical", "samples": hf.outside()}}


# --------------------------------------------------------------------------- the tables


def _err(x: float, ref: float) -> str:
    return f"{100.0 * (x / ref - 1.0):+.1f}%"


RUNS = {"hf": "HF", "sim_hf": "sim on HF's costs", "sim": "sim on starsim's profiles", "real": "starsim real"}


def tables(points: list[dict], header: str) -> str:
    """The page's two tables under ``header``, from each k's point."""
    lines = [header, "",
             "| k | HF tok/s (each run) | HF tokens/round | HF acceptance by depth | sim on HF's costs tok/s "
             "| err vs HF | sim on profiles tok/s | err vs HF | err vs real | starsim real tok/s | err vs HF |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    def spread(runs: list) -> str:  # a simulation's mean tok/s over its seeds, and their range
        each = [r.summary["throughput_tokens_per_s"] for r in runs]
        return f"{rate(runs):.0f} ({min(each):.0f}-{max(each):.0f})"

    for p in points:
        hf, real = p["hf"], p.get("real")
        cells = [str(p["k"]), f"{hf.tokens_per_s:.0f} ({', '.join(f'{x:.0f}' for x in p['hf_rates'])})",
                 f"{hf.tokens_per_round():.2f}", ", ".join(f"{x:.2f}" for x in hf.marginal()),
                 spread(p["sim_hf"]), _err(rate(p["sim_hf"]), hf.tokens_per_s),
                 spread(p["sim"]), _err(rate(p["sim"]), hf.tokens_per_s)]
        if real is not None:
            cells += [_err(rate(p["sim"]), rate(real)), f"{rate(real):.0f}", _err(rate(real), hf.tokens_per_s)]
        else:
            cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Where the time goes, per round (ms; HF's rounds after a request's first, which also encodes the "
              "prompt; starsim's every round, its first drafting from the prompt too). HF: draft is its assistant's "
              "whole `generate` call (its forwards in brackets), verify the target's forward, other its Python "
              "around that forward. Sim on HF's costs: its verify is HF's verify and other together. starsim real: "
              "other is the loopback messages to its own draft server and the target's time between rounds. Per "
              "request: the run's time outside those rounds, per request (HF: set-up and its first round; "
              "starsim: the prefill and set-up):", "",
              "| k | run | tokens/round | draft | verify | other | round | ms per token | per request outside "
              "the rounds |", "|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        for name, label in RUNS.items():
            if p.get(name) is None:
                continue
            c = p["hf"].components() if name == "hf" else mean_components(p[name])
            other = c["cycle_s"] - c["draft_s"] - c["verify_s"]
            other = other if abs(other) > 5e-6 else 0.0  # the simulator's 0, not its float rounding
            draft = f"{1e3 * c['draft_s']:.2f}" + (f" ({1e3 * c['forward_s']:.2f})" if name == "hf" else "")
            lines.append(f"| {p['k']} | {label} | "
                         f"{c['tokens_per_round']:.2f} | {draft} | {1e3 * c['verify_s']:.2f} | {1e3 * other:.2f} | "
                         f"{1e3 * c['cycle_s']:.2f} | {1e3 * c['cycle_s'] / c['tokens_per_round']:.2f} | "
                         f"{1e3 * c['per_request_s']:.1f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the run


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", default="2,4,6", help="draft lengths k (default 2,4,6)")
    ap.add_argument("--prompts", type=int, default=12, help="requests per k, one per prompt (default 12)")
    ap.add_argument("--output", type=int, default=96, help="tokens each request generates (default 96)")
    ap.add_argument("--seeds", type=int, default=10,
                    help="simulations per k and kind, seeds 0..N-1, averaged (default 10)")
    ap.add_argument("--pair", default=None, help="a built pair's folder (default: the scenario's real.pair)")
    ap.add_argument("--no-real", action="store_true", help="leave out starsim's real backend")
    ap.add_argument("--no-write", action="store_true", help="print the tables, leave analysis/results/real.md")
    return ap.parse_args()


def _prerequisites(pair: Path) -> str | None:
    """Why the script cannot run here (one line), or None."""
    missing = [p for p in ("target", "draft", "tokenizer.json") if not (pair / p).exists()]
    if missing:
        return f"no built pair at {pair} (missing {', '.join(missing)}): run `starsim models build-pair` first"
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return f"needs torch and transformers ({e}): pip install -e '.[torch]'"
    return None


def main() -> int:
    a = _args()
    t_start = time.perf_counter()
    ks = [int(x) for x in a.ks.split(",")]
    base = {"workload.prompts": a.prompts, "max_requests": a.prompts, "workload.output_tokens": a.output}
    if a.pair is not None:
        base["real.pair"] = str(Path(a.pair).resolve())
    from starsim.errors import StarsimError
    from starsim.scenario import load_scenario, parse_device_ref

    try:
        sc = load_scenario(REPO / SCENARIO, base)
        # each k's chain profile, before any run (the scenario's header says how to make one)
        chains = [load_scenario(REPO / SCENARIO, {**base, **chain(k)}).draft.round_time for k in ks]
    except StarsimError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    why = _prerequisites(Path(sc.real.pair))
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    import torch
    import transformers

    from starsim.models.reference import reference_speed
    from starsim.profile_fields import cpu_name
    from starsim.real.execute import execute
    from starsim.real.models import build_prompts, load_model, role_source, source_vocab, tokenizer_encode
    from starsim.real.resources import pinned
    from starsim.sim import simulate

    pool, _ = parse_device_ref(sc.targets[0].device)
    cpus = sc.devices[pool].unit_cpus(0)
    src = {role: role_source(sc.real, role) for role in ("target", "draft")}
    prompts = build_prompts(sc, tokenizer_encode(sc.real), source_vocab(src["target"], "target"))
    target, draft = (load_model(src[role], role, "cpu", "float32") for role in ("target", "draft"))
    points, same = [], []
    speeds = []  # the core's speed on the calibration's reference kernel, beside each HF run

    def hf_at(k: int) -> HFRun:
        threads = torch.get_num_threads()
        with pinned(cpus):
            torch.set_num_threads(1)
            try:
                speeds.append(reference_speed(1, "cpu"))
                return hf_assisted(target, draft, prompts, k)
            finally:
                torch.set_num_threads(threads)

    for k in ks:
        # HF before and after starsim's real run, so that both see the machine alike
        hf = hf_at(k)
        sc_k = load_scenario(REPO / SCENARIO, {**base, **chain(k, hf.marginal())})
        p = {"k": k}
        if not a.no_real:
            p["real"] = [execute(sc_k)]
            outs = {o["request"]: o["output"] for o in p["real"][0].outputs}
            same.append(sum(outs.get(i) == r.output for i, r in enumerate(hf.requests)))
        again = hf_at(k)
        p["hf"], p["hf_rates"] = hf.merged(again), (hf.tokens_per_s, again.tokens_per_s)
        # both simulations on both HF runs (the same rounds and acceptance: greedy; other times)
        curve = p["hf"].marginal()
        # each simulation over seeds 0..seeds-1: a dozen requests draw too few rounds for one seed's
        # acceptance to match the curve closely (tokens/round moves by several % seed to seed)
        for name, over in (("sim", {**base, **chain(k, curve)}),
                           ("sim_hf", {**base, **chain(k, curve, profile=False), **hf_costs(p["hf"])})):
            p[name] = [simulate(load_scenario(REPO / SCENARIO, {**over, "seed": seed})) for seed in range(a.seeds)]
        points.append(p)
        print(f"k={k}: HF {hf.tokens_per_s:.0f} and {again.tokens_per_s:.0f} tok/s, {hf.tokens_per_round():.2f} "
              f"tokens/round; sim on HF's costs {rate(p['sim_hf']):.0f}; sim on profiles {rate(p['sim']):.0f}"
              + (f"; real {rate(p['real']):.0f}" if "real" in p else ""), file=sys.stderr, flush=True)
    where = f"core {','.join(map(str, sorted(cpus)))}" if cpus else "any core"
    header = (f"Offline pair `{Path(sc.real.pair).name}`, {a.prompts} prompts x {a.output} tokens, greedy, float32, "
              f"one torch thread, every model on {where} of {cpu_name().removeprefix('cpu: ')}. HF: transformers "
              f"{transformers.__version__}, torch {torch.__version__}, `generate(..., assistant_model=draft)`, "
              "`num_assistant_tokens` k (constant). starsim: `scenarios/real_cpu_one_for_one_chain.yaml` "
              "(`one_for_one`) with a chain of k and HF's acceptance at that k, simulated twice: on HF's own "
              "measured times (its steady rounds' draft and the rest of each round, its time per request outside "
              "them, as samples) and on starsim's profiles (the draft's round from the chain-k profile); and run "
              "for real. HF runs twice at each k"
              + (", before and after the real run" if not a.no_real else "")
              + "; its tok/s is over both (each run's in brackets), and both simulations take both runs' "
              f"acceptance and times. Each simulation: the mean over seeds 0-{a.seeds - 1} (their range in "
              f"brackets; a seed draws its own acceptance, round by round, over the {a.prompts} requests)."
              + (f" HF's outputs equal the real run's in {sum(same)} of {len(same) * a.prompts} requests."
                 if same else "")
              + f" The core's speed beside HF's runs (a 512x512 matmul, as `starsim calibrate` times it): "
              f"{1e3 * min(speeds):.2f}-{1e3 * max(speeds):.2f} ms; the target profile's: {_profile_speed(sc)}; "
              f"the chain profiles': {', '.join(_speed(c) for c in chains)}.")
    table = tables(points, header)
    table += f"\n\nThe script's wall time: {time.perf_counter() - t_start:.0f} s."
    print(table)
    if not a.no_write:
        write_results("real", KEY, table, " ".join(["python analysis/hf_assisted.py", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
