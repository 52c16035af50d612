"""Every relative link in README.md and docs/*.md points at a file or folder of the repository: a figure's
results file or script that moved, or a docs page renamed, fails here instead of in a reader's browser."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target), target up to a space (an optional "title") or the closing parenthesis;
# and reference definitions `[label]: target`
INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s+<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def relative_links(text: str) -> list[str]:
    """The link targets of a markdown text that name a path here (no scheme, not only an anchor)."""
    prose = FENCE.sub("", text)  # a fenced code block shows markdown, it does not link
    targets = INLINE.findall(prose) + REFERENCE.findall(prose)
    return [t for t in targets if not EXTERNAL.match(t) and not t.startswith("#")]


def test_the_link_finder_reads_inline_image_and_reference_links_but_not_code_or_urls():
    text = ('see [a](docs/a.md#part), ![plot](../bench/results/x/plot.png "title") and [b][ref]\n'
            "[ref]: bench/results/b.json\n"
            "[web](https://example.org) [here](#anchor)\n"
            "```\n[not](a/link.md)\n```\n")
    assert relative_links(text) == ["docs/a.md#part", "../bench/results/x/plot.png", "bench/results/b.json"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    broken = []
    for target in relative_links(page.read_text(encoding="utf-8")):
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to missing paths: {broken}"
