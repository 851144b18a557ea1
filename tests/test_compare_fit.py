"""``starsim calibrate compare --fit`` and the GPU check's step 2 are one comparer
(:func:`starsim.calibrate.compare.against_fit`): measured points over the other profile's
fitted prediction, per op, on synthetic profiles whose ratios are known. No torch."""

from __future__ import annotations

import pytest

from starsim.calibrate.compare import against_fit, against_fits, agreement, fit_table, middle, paired
from starsim.cli import main
from starsim.profiles import ProfileFile, build_op, write_profile

TC = [(t, c) for t in (1, 4, 16) for c in (64, 256, 1024)]


def _rows(f, grid):
    return [(*x, f(*x), f(*x) * 0.95, f(*x) * 1.05, 10) for x in grid]


def _verify(t, c):
    return 2e-3 + 4e-5 * t + 1e-8 * t * c


def _profiles():
    """A "measured" target 1.5x the "imported" one's fit, a decode only in the import, a
    draft op on another tree, and an op without a fit."""
    imported = ProfileFile(model={"spec": "s", "role": "target"}, provenance={"source": "synthetic"}, ops={
        "verify": build_op(["tokens", "context"], _rows(_verify, TC)),
        "decode": build_op(["context"], _rows(lambda c: _verify(1, c), [(64,), (256,), (1024,)])),
        "draft_idle": build_op(["gap_s"], _rows(lambda g: 1e-3, [(0.0,), (0.01,)])),
    })
    measured = ProfileFile(model={"spec": "s", "role": "target"}, ops={
        "verify": build_op(["tokens", "context"], _rows(lambda t, c: 1.5 * _verify(t, c), TC)),
        "draft_idle": build_op(["gap_s"], _rows(lambda g: 2e-3, [(0.0,), (0.01,)])),
    })
    return measured, imported


def test_ratios_decode_and_notes():
    measured, imported = _profiles()
    res = against_fit(measured, imported, "target")
    ops = {o["op"]: o for o in res.ops}
    assert set(ops) == {"verify", "decode"}
    for o in ops.values():  # the fit reproduces the linear truth: every ratio is 1.5
        assert o["ratio_min"] == pytest.approx(1.5, rel=1e-6) and o["ratio_max"] == pytest.approx(1.5, rel=1e-6)
        assert o["inside_imported_range"] == o["points"]
    assert ops["verify"]["points"] == len(TC) and ops["decode"]["points"] == 3  # verify's tokens-1 points
    assert ops["decode"]["note"] == "measured: verify at tokens 1"
    assert ops["verify"]["middle_point"] == "tokens 4, context 256"  # the point of the median measured time
    assert len(res.points) == len(TC) + 3 and {"tokens", "context", "ratio"} <= set(res.points[0])
    assert res.notes == ["target draft_idle: the imported op has no fit (kept as measured): not compared"]
    both = against_fits({"target": measured, "draft": measured}, {"target": imported}, ["draft (nowhere)"])
    assert both.notes[0] == "no imported profile for the draft (nowhere)" and len(both.ops) == 2
    assert fit_table([])[-1].startswith("| | (no op in both profiles)")


def test_both_comparisons_pair_points_alike():
    """The same middle point: the median of A's times over the points compared."""
    measured, imported = _profiles()
    a, b = measured.ops["verify"], imported.ops["verify"]
    common, fitted = paired(a, b), paired(a, b, fit=True)
    assert [p for p, _, _ in common] == sorted(p for p, _, _ in fitted)
    mid = common[middle([ta for _, ta, _ in common])][0]
    row = {r.op: r for r in agreement(measured, imported)}["verify"]
    assert row.median_point == mid and row.raw_pct == pytest.approx(100 * (1 / 1.5 - 1))
    assert middle([3.0, 1.0, 2.0]) == 2 and middle([1.0, 1.0]) == 1


def test_cli_compare_fit(tmp_path, capsys):
    measured, imported = _profiles()
    a, b = write_profile(measured, tmp_path / "a.yaml"), write_profile(imported, tmp_path / "b.yaml")
    assert main(["calibrate", "compare", str(a), str(b), "--fit"]) == 0
    out = capsys.readouterr().out
    assert "| target | verify | 9 (9) | 1.500 |" in out and "| target | decode | 3 (3) | 1.500 |" in out
    assert "- target draft_idle: the imported op has no fit" in out


def test_cli_gpu_check_prerequisite_is_one_line(tmp_path, capsys):
    """``starsim calibrate gpu-check``: the script's options; a missing spec is one line, exit 2,
    before any directory is made."""
    rc = main(["calibrate", "gpu-check", "--device", "cpu", "--spec", "no-such-spec", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --spec no-such-spec") and "\n" not in err
    assert not (tmp_path / "o").exists()
    assert main(["calibrate", "gpu-check", "--readme"]) == 0
    assert capsys.readouterr().out.startswith("## GPU check")
