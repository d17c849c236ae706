"""The README and docs/ stay true to the tree: the README fits on a screen, every relative
link and image resolves (and its #anchor names a heading), every docs page is linked from
the README, the README holds the test command that .ci/run runs, and every source path the
pages name exists. Plain text checks: no Qt, no models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 150
CI_MARKER = "# The README's test command, as written there:"

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
# [text](target) and ![alt](target); the target may carry a "title"
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
HTML_LINK = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.I)
# a file of the checkout named in the text: source, tests, tools, the package's sample data
SOURCE_PATH = re.compile(r"(?<![\w./-])(?:\.\./)*((?:workbench|tests|tools)/[\w./-]*?"
                         r"\.(?:py|csv|tsv|jsonl|txt|md))\b")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def without_code_blocks(text: str) -> str:
    """The text with fenced code blocks blanked (their lines kept), where a `[x](y)` is code,
    not a link."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def links(text: str) -> list[str]:
    """Every link and image target of a Markdown text, outside code blocks and code spans."""
    prose = CODE_SPAN.sub("", without_code_blocks(text))
    return [*INLINE_LINK.findall(prose), *REFERENCE_LINK.findall(prose),
            *HTML_LINK.findall(prose)]


def is_external(target: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) is not None  # http:, mailto:, …


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation dropped,
    spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"[`*_~]|<[^>]+>", "", text)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, heading in HEADING.findall(without_code_blocks(page.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """The relative links and images of ``page`` whose file (or folder) does not exist."""
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        if is_external(target):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not path:
            continue  # an anchor in the same page: see test_anchors_name_headings
        resolved = (page.parent / path).resolve()
        if not resolved.exists() or not resolved.is_relative_to(root.resolve()):
            broken.append(target)
    return broken


def broken_anchors(page: Path) -> list[str]:
    """The links of ``page`` to a Markdown page's #anchor that names none of its headings."""
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        if is_external(target) or "#" not in target:
            continue
        path, anchor = target.split("#", 1)
        resolved = (page.parent / path).resolve() if path else page
        if resolved.suffix == ".md" and resolved.is_file() and anchor not in anchors(resolved):
            broken.append(target)
    return broken


def test_readme_fits_on_a_screen():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_and_images_resolve(page):
    assert links(page.read_text(encoding="utf-8")), "a page with no link at all"
    assert broken_links(page) == []


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_anchors_name_headings(page):
    assert broken_anchors(page) == []


def test_every_docs_page_is_linked_from_the_readme():
    assert sorted(DOCS.glob("*.md")), "docs/ has no pages"
    linked = {(ROOT / target.split("#", 1)[0]).resolve()
              for target in links(README.read_text(encoding="utf-8"))
              if not is_external(target) and not target.startswith("#")}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert missing == []


def test_readme_holds_the_test_command_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert CI_MARKER in [line.strip() for line in ci], f".ci/run lost {CI_MARKER!r}"
    at = [line.strip() for line in ci].index(CI_MARKER)
    command = ci[at + 1].strip()
    assert command and not command.startswith("#")
    assert command in README.read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_named_files_exist(page):
    named = set(SOURCE_PATH.findall(page.read_text(encoding="utf-8")))
    missing = sorted(path for path in named if not (ROOT / path).is_file())
    assert missing == []


def test_the_checks_find_what_is_broken(tmp_path):
    """The checks above would fail on a broken page, not pass on anything."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "there.png").write_bytes(b"")
    page = tmp_path / "docs" / "page.md"
    page.write_text("# A page\n\n## Second part\n\n"
                    "![ok](../there.png) [missing](../nowhere.md) ![gone](../gone.png \"t\")\n"
                    "[web](https://example.com/x.md) [self](#second-part) [bad](#no-such)\n"
                    "`[code](../not-a-link.md)`\n\n```\n[fenced](../not-a-link.md)\n```\n"
                    "[ref]: ../also-missing.md\n"
                    "Source: workbench/core/no_such_module.py and ../workbench/app.py;\n"
                    "data: workbench/data/gone.tsv; not a path: lm-workbench/models/x.py\n",
                    encoding="utf-8")
    assert broken_links(page, tmp_path) == ["../nowhere.md", "../gone.png",
                                            "../also-missing.md"]
    assert broken_anchors(page) == ["#no-such"]
    named = set(SOURCE_PATH.findall(page.read_text(encoding="utf-8")))
    assert named == {"workbench/core/no_such_module.py", "workbench/app.py",
                     "workbench/data/gone.tsv"}
    assert slug("`workbench/core/common` — what every capability shares") == \
        "workbenchcorecommon--what-every-capability-shares"
    assert slug("A job, from a button to the worker and back") == \
        "a-job-from-a-button-to-the-worker-and-back"
