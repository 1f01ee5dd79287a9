"""The docs a newcomer reads: every relative link in README.md and docs/ resolves (file and
anchor), and the README's two quick-start commands stand where .ci/run reads them."""
from __future__ import annotations

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "README.md")] + sorted(
    glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
LINK = re.compile(r"\[[^\]]*\]\(<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\)")   # [text](target "title")
FENCE = re.compile(r"^(```|~~~)")


def _unfenced(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    out, fenced = [], False
    for line in text.split("\n"):
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced:
            out.append(line)
    return out


def anchors(path: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1, -2 ...
    for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for line in _unfenced(open(path, encoding="utf-8").read()):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(path: str) -> list[str]:
    prose = "\n".join(re.sub(r"`[^`]*`", "", line)     # a link in a code span is not one
                       for line in _unfenced(open(path, encoding="utf-8").read()))
    return [t for t in LINK.findall(prose)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]       # http:, https:, mailto: ...


def test_anchor_rule(tmp_path):
    # Headings as the docs write them: code spans keep their text, punctuation goes.
    f = tmp_path / "a.md"
    f.write_text("# Models: `dlkern.models` and `python -m bench.models`\n## A b\n## A b\n"
                 "```\n# not a heading\n```\n")
    assert anchors(str(f)) == {"models-dlkernmodels-and-python--m-benchmodels", "a-b", "a-b-1"}


def broken_links(path: str) -> list[str]:
    bad = []
    for target in links(path):
        file, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        if not os.path.exists(dest):
            bad.append(f"{target}: no file {dest}")
        elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest}")
    return bad


def test_broken_links_are_found(tmp_path):
    (tmp_path / "b.md").write_text("# Here\n")
    f = tmp_path / "a.md"
    f.write_text("# Top\n[ok](b.md) [ok](b.md#here) [ok](#top) [web](https://x.org/y)\n"
                 "`[code](nowhere.md)`\n[bad](c.md \"a title\") [bad](b.md#there) [bad](#bottom)\n")
    assert [b.split(":")[0] for b in broken_links(str(f))] == ["c.md", "b.md#there", "#bottom"]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_resolve(path):
    bad = broken_links(path)
    assert not bad, f"{os.path.relpath(path, ROOT)}: broken links:\n" + "\n".join(bad)


def test_docs_do_not_point_outside_the_repository():
    for path in DOCS:
        for target in links(path):
            dest = os.path.normpath(os.path.join(os.path.dirname(path), target.partition("#")[0]))
            assert dest.startswith(ROOT + os.sep) or dest == ROOT, \
                f"{os.path.relpath(path, ROOT)} links outside the repository: {target}"


def quickstart_command(name: str) -> str:
    """The command .ci/run runs: the single line of the fenced block after `<!-- ci: NAME -->`."""
    lines = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().split("\n")
    marker = f"<!-- ci: {name} -->"
    assert lines.count(marker) == 1, f"README.md needs exactly one {marker!r}"
    i = lines.index(marker)
    fence, cmd, close = lines[i + 1], lines[i + 2], lines[i + 3]
    assert fence.startswith("```") and close == "```", \
        f"README.md: {marker} must be followed by a fenced block of one line"
    return cmd


def test_quickstart_commands_are_the_ones_ci_runs():
    main_job, tests = quickstart_command("main-job"), quickstart_command("tests")
    assert main_job.endswith("python -m bench.layers --impl custom,torch"), main_job
    assert "pip install -e ." in main_job and "--no-build-isolation" not in main_job, main_job
    assert tests.endswith("pytest tests/"), tests
    assert "python -m pytest" not in tests, tests
    ci = [line.strip() for line in open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8")]
    for name, var in (("main-job", "MAIN_JOB"), ("tests", "TESTS")):
        assert f"{var}=$(readme_command {name})" in ci and f'eval "${var}"' in ci, \
            f".ci/run must run the README's {name} command as it stands"
