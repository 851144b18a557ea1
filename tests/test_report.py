"""``starsim report``: figures and one offline HTML page from short simulated runs."""

from __future__ import annotations

import argparse
import base64
import re
from pathlib import Path

import numpy as np
import pytest

from starsim import load_scenario, simulate
from starsim.errors import StarsimError
from starsim.report import FIGURES, SERVING_ONLY, build_report
from starsim.report.commands import add_parsers

REPO = Path(__file__).resolve().parent.parent
PLAIN = [f for f in FIGURES if f[0] not in SERVING_ONLY]  # a report of runs without serving targets
SHORT = ["duration_s=20"]  # warm-up 10 s and cool-down 5 s leave 5 s measured


def report_cli(*argv) -> int:
    """The command as the CLI will call it: a parser with ``add_parsers``, then ``func``."""
    p = argparse.ArgumentParser(prog="starsim")
    add_parsers(p.add_subparsers(dest="command"))
    args = p.parse_args(["report", *map(str, argv)])
    return args.func(args)


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory) -> list[Path]:
    base = tmp_path_factory.mktemp("runs")
    out = []
    for n in (1, 4):
        res = simulate(load_scenario(REPO / "scenarios" / f"starsd_ref_n{n}.yaml", SHORT))
        out.append(res.write(base / f"n{n}", trace=False))
    return out


@pytest.fixture(scope="module")
def report(run_dirs, tmp_path_factory):
    return build_report(run_dirs, tmp_path_factory.mktemp("report"), "png,svg")


def test_every_figure_file_is_written(report):
    assert [p.name for p in report.files] == [f"{stem}.{ext}" for _, stem, _, _ in PLAIN for ext in ("png", "svg")]
    for p in report.files:
        assert p.is_file() and p.stat().st_size > 1000, p
        if p.suffix == ".svg":
            assert b"<dc:date>" not in p.read_bytes()  # no creation date: reruns are byte-identical
    assert report.files[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_axes_has_data(report):
    assert set(report.figures) == {key for key, *_ in PLAIN}
    for key, fig in report.figures.items():
        assert fig.axes, key
        for ax in fig.axes:
            assert ax.lines or ax.patches or ax.collections, f"{key}: empty axes {ax.get_title()!r}"
            assert ax.get_xlabel() or ax.get_xticklabels(), key
        assert "sim" in fig.get_suptitle() and "starsd-ref-n4" in fig.get_suptitle(), key


def test_html_is_self_contained(report, run_dirs):
    html = report.html.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower() and "<link" not in html.lower()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == len(PLAIN)
    for b64 in images:
        assert base64.b64decode(b64)[:4] == b"\x89PNG"
    for _, _, heading, _ in PLAIN:
        assert heading in html
    # the summary table: one row per run, the key metrics, and the provenance
    assert 'class=summary' in html and "draft utilization (%)" in html and "TPOT, mean (ms)" in html
    assert "draft idle ratio (mean of windows) (%)" in html  # a ratio in %, as on the terminal
    for name in ("starsd-ref-n1", "starsd-ref-n4"):
        assert f"<td>{name}</td>" in html
    assert "scenario hash" in html and "starsim report" in html


def test_series_agree_with_the_summary(report):
    """The plotted series are the rows behind summary.json's numbers (metrics computes them)."""
    from starsim.report import data

    for run in report.runs:
        s = run.summary
        assert data.idle_gaps(run).mean() == pytest.approx(s["draft_idle_gap_mean_s"])
        assert data.idle_ratio_over_time(run)["idle_ratio"].mean() == pytest.approx(s["draft_idle_ratio_mean"])
        assert data.draft_task_times(run).mean() == pytest.approx(s["draft_task_time_mean_s"])
        assert data.round_times(run).mean() == pytest.approx(s["round_time_mean_s"])
        assert run.source == "sim" and run.n_targets == s["n_targets"]


def test_cli_default_out_and_format(run_dirs, capsys):
    assert report_cli(run_dirs[0], "--format", "png", "--from", "11", "--to", "11.2") == 0
    out = run_dirs[0] / "report"
    assert sorted(p.suffix for p in out.iterdir()) == [".html"] + [".png"] * len(PLAIN)
    assert "wrote" in capsys.readouterr().out
    assert "--from 11 --to 11.2" in (out / "report.html").read_text()


def test_figures_are_deterministic(report, tmp_path):
    """The same runs give the same files, whatever formats were asked for alongside."""
    from starsim.report import figures

    for make, stem in ((figures.timeline, "fig1_timeline"), (figures.fairness, "fig5_fairness")):
        (p,) = figures.save(make(report.runs), tmp_path / stem, ["svg"])
        assert p.read_bytes() == (report.html.parent / p.name).read_bytes(), p.name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{empty}"], "{empty}: not a run directory (no rounds table)"),
        (["{missing}"], "{missing}: not a run directory (not found)"),
        (["{run}", "--format", "pdf"], "--format: expected png, svg or png,svg, got 'pdf'"),
        (["{run}", "--from", "3", "--to", "2"], "--to 2: must be after --from (3)"),
        (["{run}", "--from", "99"], "--from 99: {run} ends at 20 s"),
    ],
)
def test_bad_input_is_one_line(tmp_path, run_dirs, argv, message):
    paths = {"empty": tmp_path, "missing": tmp_path / "nope", "run": run_dirs[0]}
    with pytest.raises(StarsimError) as e:
        report_cli(*(a.format(**paths) for a in argv), "--out", tmp_path / "out")
    assert str(e.value) == message.format(**paths)
    assert "\n" not in str(e.value)


def test_draft_memory_figure_follows_the_held_bytes(tmp_path):
    """Figure 7: the memory curve is the metrics' own series, under draft.memory_bytes."""
    import copy

    from conftest import CONST_STAR

    from starsim import simulate, validate_scenario
    from starsim.metrics import draft_kv_series
    from starsim.report import build_report

    sc = copy.deepcopy(CONST_STAR)
    sc["draft"].update(encode_per_token_s=0.00001, memory_bytes=451 * 1000)
    sc.update(duration_s=10.0, warmup_s=1.0)
    res = simulate(validate_scenario(sc))
    res.write(tmp_path / "run")
    t, held = draft_kv_series(res.records)
    assert len(t) and held.max() == res.summary["draft_kv_bytes_peak"] <= 451 * 1000 and held.min() >= 0
    rep = build_report([tmp_path / "run"], tmp_path / "rep", "png")
    fig = rep.figures["draft_memory"]
    line = fig.axes[0].lines[0]
    assert np.allclose(line.get_ydata(), held / 1e6)
    assert (tmp_path / "rep" / "fig7_draft_memory.png").is_file()


def test_a_serving_run_gets_its_figure(tmp_path):
    """Runs with serving targets add figure 8: each target's batch and KV usage over time; and
    figure 4 draws the closed form once per batch size."""
    res = simulate(load_scenario(str(REPO / "scenarios" / "serving_const.yaml"),
                                 ["duration_s=4", "targets.0.serving.kv_capacity_tokens=8000"]))
    res.write(tmp_path / "run", trace=False)
    small = simulate(load_scenario(str(REPO / "scenarios" / "serving_const.yaml"),
                                   ["duration_s=4", "targets.0.count=2", "targets.0.serving.max_seqs=4",
                                    "workload.concurrency=4"]))
    small.write(tmp_path / "small", trace=False)
    rep = build_report([tmp_path / "run", tmp_path / "small"], tmp_path / "report", formats="png")
    assert [p.name for p in rep.files][-1] == "fig8_serving.png"
    top, bottom = rep.figures["serving"].axes
    assert len(top.lines) == len(bottom.lines) == 4 + 2  # one per target of each run
    assert max(max(line.get_ydata()) for line in top.lines) == 16
    legend = [t.get_text() for t in rep.figures["scaling"].legends[0].get_texts()]
    # one closed-form line per batch: 4, and the first run's 13 (KV of 8000 tokens holds 13 requests)
    assert sorted(t.split("batch ")[1] for t in legend if t.startswith("closed form")) == ["13", "4"]
