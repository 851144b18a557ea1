"""Declared resources in `starsim execute` (issue 17): each role runs on the cores its device
pool declares (``cpus``), and the roles placed on one unit take turns on it, first come first
served, as the simulator has them."""

from __future__ import annotations

import contextlib
import copy
import multiprocessing as mp
import os
import threading
import time

import pytest
import yaml
from conftest import CONST_STAR

from starsim import load_scenario, validate_scenario
from starsim.cli import main
from starsim.errors import ScenarioError
from starsim.real.resources import UnitLock

TWO_CORES = hasattr(os, "sched_getaffinity") and {0, 1} <= os.sched_getaffinity(0)


def _hold(lock, log, i, ready, start):
    ready.put(i)
    start.wait()
    time.sleep(0.1 * i)  # ask in index order
    with lock:
        t0 = time.monotonic()
        time.sleep(0.15)
        log.put((i, t0, time.monotonic()))


@pytest.mark.parametrize("slots", [1, 2])
def test_a_unit_lock_serves_in_order_and_holds_at_most_slots(slots):
    ctx = mp.get_context("spawn")
    lock, log, ready, start = UnitLock(ctx, slots), ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_hold, args=(lock, log, i, ready, start)) for i in range(4)]
    for p in procs:
        p.start()
    for _ in procs:  # every process started (spawning takes a while each)
        ready.get(timeout=60)
    start.set()
    rows = sorted(log.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(10)
    entered = [i for i, _, _ in sorted(rows, key=lambda r: r[1])]
    assert entered == [0, 1, 2, 3]  # first come, first served
    for _, t0, _ in rows:  # holders at each entry, itself included
        assert sum(a <= t0 < b for _, a, b in rows) <= slots


@pytest.mark.parametrize("slots", [1, 2])
def test_a_unit_lock_reuses_its_wake_ups_without_losing_or_doubling_a_turn(slots):
    # many more tickets than semaphores (users + slots): the ring is reused thousands of
    # times; a lost wake-up would hang a thread, a doubled one would let slots + 1 in
    users, rounds = 5, 400
    lock = UnitLock(mp.get_context("spawn"), slots, users=users)
    inside, peak, guard = [0], [0], threading.Lock()

    def role():
        for _ in range(rounds):
            with lock:
                with guard:
                    inside[0] += 1
                    peak[0] = max(peak[0], inside[0])
                time.sleep(0)  # let another role ask meanwhile
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=role) for _ in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert peak[0] == slots and inside[0] == 0
    assert lock._next.value == lock._done.value == users * rounds


def _hold_forever(lock, role, inside):
    lock.bind(role)
    with lock:
        inside.set()
        time.sleep(3600)  # killed while it holds the unit


def _wait_then_note(lock, role, got):
    lock.bind(role)
    with lock:
        got.set()


def test_a_role_killed_holding_or_waiting_gives_its_turn_back():
    """Issue 29: a target killed while it holds its unit (or waits for it) no longer blocks
    the unit's other roles until the horizon: the run releases its ticket."""
    ctx = mp.get_context("spawn")
    lock = UnitLock(ctx, 1, users=4, roles=3)
    inside, got = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_forever, args=(lock, 0, inside))
    holder.start()
    assert inside.wait(60)
    waiter = ctx.Process(target=_wait_then_note, args=(lock, 1, got))
    waiter.start()
    assert not got.wait(1.0)  # the unit is held
    holder.kill()
    holder.join(10)
    assert not got.wait(0.5)  # dead, but its turn is still taken until the run gives it back
    lock.release(0)
    assert got.wait(30)
    waiter.join(10)
    # a role killed while waiting: its turn, when it comes, is skipped
    lock.bind(2)
    with lock:  # this process holds the unit
        dead = ctx.Process(target=_wait_then_note, args=(lock, 1, ctx.Event()))
        dead.start()
        time.sleep(1.0)  # it is waiting now
        dead.kill()
        dead.join(10)
        lock.release(1)
    late = ctx.Event()
    after = ctx.Process(target=_wait_then_note, args=(lock, 1, late))
    after.start()
    assert late.wait(30)  # not stuck behind the dead ticket
    after.join(10)
    lock.release(1)  # nothing held: a no-op


def test_cpus_are_one_entry_per_unit():
    sc = copy.deepcopy(CONST_STAR)
    sc["devices"]["g"]["cpus"] = [1]
    with pytest.raises(ScenarioError, match=r"devices.g: cpus: one entry per unit \(16\), got 1"):
        validate_scenario(sc, source="x")
    sc["devices"]["g"]["cpus"] = [[1, 2]] * 15 + [[]]
    with pytest.raises(ScenarioError, match="empty"):
        validate_scenario(sc, source="x")
    sc["devices"]["g"]["cpus"] = [0] * 15 + [5000]
    with pytest.raises(ScenarioError, match="devices.g.cpus.15"):
        validate_scenario(sc, source="x")
    sc["devices"]["g"]["cpus"] = [[0, 1]] + list(range(15))
    assert validate_scenario(sc, source="x").devices["g"].unit_cpus(0) == frozenset({0, 1})


def _declared(tmp_path, pair, cores=(0, 1)) -> str:
    """Draft on core ``cores[0]``, two targets sharing one unit on core ``cores[1]``."""
    sc = copy.deepcopy(CONST_STAR)
    sc["devices"] = {"dcore": {"type": "cpu core", "cpus": [cores[0]]},
                     "tcore": {"type": "cpu core", "cpus": [cores[1]]}}
    sc["draft"]["device"] = "dcore"
    sc["targets"][0].update(count=2, device="tcore")
    sc.update(max_requests=4, duration_s=60.0, warmup_s=0.0,
              workload={"kind": "closed", "prompts": 3, "prompt_tokens": 30, "output_tokens": 24},
              real={"pair": str(pair)})
    f = tmp_path / "declared.yaml"
    f.write_text(yaml.safe_dump(sc))
    return str(f)


def test_an_unavailable_core_is_one_line(tmp_path, quick_pair, capsys):
    assert main(["execute", _declared(tmp_path, quick_pair, cores=(0, 4095)), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "devices.tcore.cpus (unit tcore[0]): cores [4095] are not available" in err, err


@pytest.mark.skipif(not TWO_CORES, reason="needs cores 0 and 1")
def test_execute_runs_each_role_on_its_cores_and_shared_units_take_turns(tmp_path, quick_pair):
    from starsim.real.execute import execute

    res = execute(load_scenario(_declared(tmp_path, quick_pair)))
    prov = res.summary["provenance"]
    assert not prov["failures"], prov["failures"]
    # read by each role itself: the draft server's engine, each target process
    assert prov["processes"]["cpus"] == {"draft-0": [0], "target-0": [1], "target-1": [1]}
    assert prov["processes"]["shared_units"] == ["tcore[0]"]
    assert res.summary["requests_completed"] == 4
    iv = res.intervals
    on = iv[iv["device"] == "tcore[0]"].sort_values("start")
    assert set(on["kind"]) >= {"verify", "prefill"} and set(on["target"]) == {0, 1}
    assert (on["start"].to_numpy()[1:] >= on["end"].to_numpy()[:-1] - 1e-9).all()  # never two at once


def test_the_run_gives_a_dead_targets_turn_back():
    """execute's collector, finding target 1's process dead while it held its shared unit,
    releases its turn: the unit's next role gets in at once."""
    import queue
    from types import SimpleNamespace

    from starsim.real.execute import RunShared, _collect
    from starsim.real.run_requests import InProgress

    ctx = mp.get_context("spawn")
    lock = UnitLock(ctx, 1, users=2, roles=2)
    lock.bind(1).__enter__()  # as target 1's process does, then dies holding it
    shared = RunShared(issued=None, ready=None, go=None, clock0=None, results=queue.Queue(),
                       taken=InProgress(ctx, 2))
    procs = [SimpleNamespace(exitcode=None), SimpleNamespace(exitcode=-9)]
    got = _collect(shared, procs, None, time.monotonic() + 1.0, [lock, lock])
    assert "exit code -9" in got[1]["error"] and 0 not in got
    other = UnitLock.__new__(UnitLock)
    other.__dict__.update(lock.__dict__, role=0)
    done = threading.Event()
    threading.Thread(target=lambda: (other.__enter__(), done.set()), daemon=True).start()
    assert done.wait(5)  # not blocked behind the dead holder


@pytest.mark.skipif(not TWO_CORES, reason="needs core 0")
def test_calibrate_times_on_the_declared_cores(tmp_path):
    from starsim.profiles import read_profile

    assert main(["calibrate", "compute", "--spec", "tiny-cpu", "--roles", "draft", "--ops", "draft_round",
                 "--grid", "quick", "--threads", "1", "--cpus", "0", "--out", str(tmp_path), "--quiet"]) == 0
    (path,) = tmp_path.glob("*.yaml")
    assert read_profile(path).provenance["cpus"] == [0]


def test_bad_cpus_flag_is_one_line(tmp_path, capsys):
    for text, says in (("x", "expected cores like 1, 0,2 or 0-3"), ("4095", "cores [4095] are not available")):
        with pytest.raises(SystemExit) if text == "x" else contextlib.nullcontext():  # argparse exits itself
            code = main(["calibrate", "compute", "--spec", "tiny-cpu", "--cpus", text, "--out", str(tmp_path)])
            assert code == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and says in err, err


def test_the_shipped_declared_scenario_is_valid():
    from pathlib import Path

    sc = load_scenario(Path(__file__).resolve().parent.parent / "scenarios" / "real_cpu_declared_n2.yaml")
    assert sc.devices["dcore"].unit_cpus(0) == frozenset({0}) and sc.devices["tcore"].unit_cpus(0) == frozenset({1})


@pytest.mark.skipif(not TWO_CORES, reason="needs core 1")
def test_a_draft_co_located_with_a_target_takes_turns_with_it(tmp_path, quick_pair):
    """The draft server on the target's unit (the simulator's co-located draft): the server's
    engine, in this process, and the target process take turns on the unit's one core."""
    from starsim.real.execute import execute

    sc = yaml.safe_load(open(_declared(tmp_path, quick_pair)))
    sc["draft"]["device"] = "tcore"
    sc["targets"][0]["count"] = 1
    sc["max_requests"] = 3
    f = tmp_path / "colocated.yaml"
    f.write_text(yaml.safe_dump(sc))
    res = execute(load_scenario(f))
    prov = res.summary["provenance"]
    assert prov["processes"]["cpus"] == {"draft-0": [1], "target-0": [1]}
    assert prov["processes"]["shared_units"] == ["tcore[0]"]
    iv = res.intervals
    on = iv[iv["device"] == "tcore[0]"].sort_values("start")
    assert {"draft", "verify", "prefill"} <= set(on["kind"])
    assert (on["start"].to_numpy()[1:] >= on["end"].to_numpy()[:-1] - 1e-9).all()  # never at once
