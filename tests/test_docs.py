"""The documentation: README size, links that resolve, an index that lists every page, snippets that run.

Pure Python (no Spark): the reading snippets of the README run against a tiny
warehouse written here with pyarrow; the Spark snippet is only checked for
the session it creates.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_LIMIT = 12 * 1024

FENCE = re.compile(r"^\s{0,3}(```|~~~)")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def doc_files() -> list[Path]:
    """Every Markdown file whose links are checked."""
    files = [README, ROOT / "bench" / "README.md"]
    files += sorted((ROOT / "docs").glob("*.md"))
    files += sorted((ROOT / "bench" / "results").glob("*.md"))
    return files


def prose_lines(text: str, *, blank_code: bool = True) -> list[str]:
    """The lines outside fenced code blocks (with inline code spans blanked unless ``blank_code`` is false)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line) if blank_code else line)
    return out


def links(path: Path) -> list[str]:
    """Targets of the inline links, images and reference definitions of a Markdown file."""
    found = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        found += INLINE_LINK.findall(line)
        ref = REFERENCE_DEF.match(line)
        if ref:
            found.append(ref.group(1))
    return [target for target in found if target]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: the rendered text, lowercased, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 … for repeated headings."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(path.read_text(encoding="utf-8"), blank_code=False):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def test_slug_follows_githubs_rules():
    assert slug("Scoring: `bench/scoring.py`") == "scoring-benchscoringpy"
    assert slug("The item-item model (`item_item`)") == "the-item-item-model-item_item"
    assert slug("Non-factorised models (DeepFM, Wide & Deep, NCF)") == "non-factorised-models-deepfm-wide--deep-ncf"
    assert slug("User history: +7% on the test split") == "user-history-7-on-the-test-split"


def test_readme_fits_its_limit():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size:,} bytes, over {README_LIMIT:,}: move reference text to docs/"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    problems = []
    for target in links(path):
        if SCHEME.match(target):
            continue  # a web address, not checked here
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.is_file():
            problems.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading '#{anchor}' in {dest.relative_to(ROOT)}")
    assert not problems, f"{path.relative_to(ROOT)}:\n  " + "\n  ".join(problems)


def _linked_files(index: Path) -> set[Path]:
    return {(index.parent / t.partition("#")[0]).resolve() for t in links(index) if not SCHEME.match(t)}


def test_docs_index_links_every_page():
    index = ROOT / "docs" / "README.md"
    pages = {p.resolve() for p in (ROOT / "docs").glob("*.md")} - {index.resolve()}
    missing = sorted(p.name for p in pages - _linked_files(index))
    assert not missing, f"docs/README.md does not link: {', '.join(missing)}"


def test_results_index_links_every_result():
    index = ROOT / "bench" / "results" / "README.md"
    results = {p.resolve() for p in index.parent.glob("*.md")} - {index.resolve()}
    missing = sorted(p.name for p in results - _linked_files(index))
    assert not missing, f"bench/results/README.md does not link: {', '.join(missing)}"


def test_readme_links_the_docs_and_the_benchmarks():
    linked = _linked_files(README)
    for page in (ROOT / "docs" / "README.md", ROOT / "bench" / "README.md"):
        assert page.resolve() in linked, f"README.md does not link {page.relative_to(ROOT)}"


# -- the reading snippets ---------------------------------------------------------------
def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


SNIPPET_FILES = [README, ROOT / "docs" / "tables.md"]


@pytest.mark.parametrize("path", SNIPPET_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_snippets_set_the_date_once(path):
    blocks = _python_blocks(path)
    assert blocks, f"{path.name} has no Python snippets"
    for block in blocks:
        dates = DATE.findall(block)
        assert len(dates) <= 1, f"a snippet repeats its date instead of using a variable:\n{block}"
        if "pyspark" in block:
            assert "SparkSession.builder.getOrCreate()" in block, f"the Spark snippet must create its session:\n{block}"


def _tiny_warehouse(root: Path, ds: str) -> None:
    """recommendations/ds=…/model=two_tower as nightrec publishes it: Parquet, manifest, marker."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = root / "warehouse" / "recommendations" / f"ds={ds}" / "model=two_tower"
    part.mkdir(parents=True)
    users = [42] * 3 + [7] * 3
    table = pa.table({
        "user_id": pa.array(users, pa.int64()),
        "rank": pa.array([1, 2, 3] * 2, pa.int32()),
        "item_id": pa.array([11, 12, 13, 11, 14, 15], pa.int64()),
        "score": pa.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], pa.float32()),
        "source": pa.array(["model"] * 6),
    })
    pq.write_table(table, part / "part-00000.parquet")
    manifest = {"row_count": 6, "trained_on": "train+holdout through ds", "metrics": {}, "k": 3}
    (part / "_manifest.json").write_text(json.dumps(manifest))
    (part / "_SUCCESS").write_text("")


@pytest.mark.parametrize("path", SNIPPET_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_reading_snippets_run(path, tmp_path, monkeypatch, capsys):
    runnable = [b for b in _python_blocks(path) if "pyspark" not in b]
    assert runnable
    ds = next(d for b in runnable for d in DATE.findall(b))
    _tiny_warehouse(tmp_path, ds)
    monkeypatch.chdir(tmp_path)
    for block in runnable:
        if "import duckdb" in block:
            pytest.importorskip("duckdb")
        namespace: dict = {"__name__": "__snippet__"}
        exec(compile(block, f"<{path.name} snippet>", "exec"), namespace)
        out = capsys.readouterr().out
        assert out.strip() and "False" not in out, f"the snippet printed {out!r}:\n{block}"
        if "42" in block:  # the snippets that pick user 42 show only its rows (item 13 is 42's, 15 is user 7's)
            assert "13" in out and "15" not in out, f"the snippet printed {out!r}:\n{block}"
        if "table" in namespace and hasattr(namespace["table"], "num_rows"):
            assert namespace["table"].num_rows == 6
