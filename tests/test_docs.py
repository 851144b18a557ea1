"""The user docs hold: every relative link and image in the README, the pages it sends a
reader to (the scenario reference, the limits, the plan format, models, traces) and the
results pages resolves (a file, and a heading for an #anchor, by GitHub's slug rules); the
README stays short, with a table of contents, a line for every command and the Python API
that ``starsim`` really exports; its example runs; every table an analysis script writes has
its block on a results page, stamped with the command and the date."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

import starsim

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "analysis" / "results"
# the README, the pages it sends a reader to, and every results page
PAGES = sorted([README, ROOT / "scenarios" / "README.md", ROOT / "scenarios" / "limits.md",
                ROOT / "scenarios" / "plans" / "README.md", ROOT / "models" / "README.md",
                ROOT / "traces" / "README.md", *RESULTS.glob("*.md")])

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
BLOCK = re.compile(r"<!-- begin (?P<key>[\w-]+): written by (?P<cmd>[^>]*?) -->\n(?P<body>.*?)<!-- end (?P=key) -->",
                   re.DOTALL)
# the command, the day and the machine the table was measured on
STAMP = re.compile(r"<sub>Written by `(?P<cmd>[^`]+)` on \d{4}-\d{2}-\d{2} \(UTC\), on (?:cpu|GPU): [^<]+\.</sub>")


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code (neither holds links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text as rendered, lowercased, punctuation other than
    '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page, duplicates numbered as GitHub does (-1, -2)."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)
        if not m:
            continue
        s = slug(m.group(1))
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def links(page: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(_prose(page.read_text()))]


def test_slug_follows_github():
    assert slug("On the OS's placement (2026-11-24)") == "on-the-oss-placement-2026-11-24"
    assert slug("M-for-N draft fabric") == "m-for-n-draft-fabric"
    assert slug("Does a shared draft pay at serving batch sizes?") == "does-a-shared-draft-pay-at-serving-batch-sizes"
    assert slug("`trace`: replay an Azure LLM inference trace") == "trace-replay-an-azure-llm-inference-trace"
    assert slug("Serving targets (continuous batching)") == "serving-targets-continuous-batching"


def test_the_pages_exist():
    assert README in PAGES and len(list(RESULTS.glob("*.md"))) >= 10


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    bad = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            bad.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not bad, "\n".join(bad)


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_readme_is_short_and_has_a_table_of_contents():
    lines = README.read_text().splitlines()
    assert len(lines) <= 420, f"README.md has {len(lines)} lines (at most 420)"
    sections = [slug(line[3:]) for line in FENCE.sub("", README.read_text()).splitlines() if line.startswith("## ")]
    toc = {t.lstrip("#") for t in links_in(_section("Contents"))}
    missing = [s for s in sections if s != "contents" and s not in toc]
    assert not missing, f"sections not in the README's Contents: {missing}"


def links_in(text: str) -> list[str]:
    return [m.group(1) for m in LINK.finditer(_prose(text))]


def test_readme_lists_every_command():
    from starsim.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    table = _section("Commands")
    missing = [c for c in sub.choices if f"`starsim {c}" not in table]
    assert not missing, f"commands not in the README's table: {missing}"


def test_the_python_api_section_lists_what_starsim_exports():
    section = _section("Python API")
    listed = re.findall(r"^\| `([\w]+)` \|", section, re.MULTILINE)
    assert sorted(listed) == sorted(starsim.__all__)
    for name in starsim.__all__:
        assert getattr(starsim, name) is not None, name


def test_import_starsim_stays_light():
    code = ("import sys, starsim; heavy = [m for m in ('torch', 'matplotlib', 'ray', 'starsim.real', 'starsim.plan', "
            "'starsim.validate', 'starsim.report') if m in sys.modules]; print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_the_python_api_example_runs(tmp_path):
    """The README's example, as written, from a folder that has the repository's scenarios."""
    code = re.search(r"```python\n(.*?)```", _section("Python API"), re.DOTALL).group(1)
    (tmp_path / "scenarios").symlink_to(ROOT / "scenarios")
    (tmp_path / "example.py").write_text(code)
    r = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "112 points" in r.stdout
    assert (tmp_path / "runs" / "n6" / "report" / "report.html").is_file()


@pytest.mark.parametrize("page", sorted(RESULTS.glob("*.md")), ids=lambda p: p.name)
def test_a_results_page_says_what_regenerates_it(page):
    lines = [ln for ln in page.read_text().splitlines() if ln.strip()]
    assert lines[0].startswith("# "), "a results page starts with its title"
    assert lines[1].startswith("Regenerated by") or lines[1].startswith("This section"), lines[1]
    text = page.read_text()
    assert text.count("<!-- begin ") == text.count("<!-- end "), "a block without its end"
    for m in BLOCK.finditer(text):
        stamp = STAMP.search(m.group("body"))
        assert stamp and stamp.group("cmd") == m.group("cmd"), f"block {m.group('key')}: no stamp of its command"


def _calls() -> list[tuple[str, str, str]]:
    """(script, page, key) of every write_results call in analysis/; a key from an f-string is a
    pattern, each ``{...}`` matching a word."""
    out = []
    for script in sorted((ROOT / "analysis").glob("*.py")):
        for m in re.finditer(r"write_results\(\s*\"(\w+)\",\s*(f?)\"([^\"]+)\"", script.read_text()):
            key = re.sub(r"\\\{[^}]*\\\}", r"[\\w-]+", re.escape(m.group(3))) if m.group(2) else re.escape(m.group(3))
            out.append((script.name, m.group(1), key))
    return out


def test_every_table_a_script_writes_has_its_block():
    calls = _calls()
    assert len(calls) >= 10
    for script, page, key in calls:
        path = RESULTS / f"{page}.md"
        assert path.is_file(), f"{script}: no page {path.relative_to(ROOT)}"
        keys = [m.group("key") for m in BLOCK.finditer(path.read_text())]
        assert any(re.fullmatch(key, k) for k in keys), f"{script}: no block {key} in {path.name}"


def test_write_results_replaces_its_block_only(tmp_path):
    sys.path.insert(0, str(ROOT / "analysis"))
    try:
        from _cli import write_results
    finally:
        sys.path.remove(str(ROOT / "analysis"))
    page = tmp_path / "p.md"
    page.write_text("# P\n\nbefore\n\n<!-- begin t: written by python x.py -->\nold\n<!-- end t -->\n\nafter\n")
    write_results("p", "t", "| a |\n|---|\n| 1 |\n", "python x.py", results=tmp_path)
    text = page.read_text()
    assert "old" not in text and "| 1 |" in text and text.startswith("# P\n\nbefore\n") and text.endswith("after\n")
    m = BLOCK.search(text)
    assert m and STAMP.search(m.group("body")).group("cmd") == "python x.py"
    write_results("p", "t", "| b |", "python x.py", results=tmp_path)  # again: still one block
    assert page.read_text().count("<!-- begin t:") == 1 and "| 1 |" not in page.read_text()
    with pytest.raises(SystemExit):
        write_results("p", "missing", "x", "python x.py", results=tmp_path)


HISTORY = re.compile(r"\bissue \d+|renovation|this stop|earlier stop|\bpreviously\b|until now", re.IGNORECASE)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_docs_tell_no_project_history(page):
    found = [line for line in page.read_text().splitlines() if HISTORY.search(line)]
    assert not found, found
