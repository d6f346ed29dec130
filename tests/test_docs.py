"""Every file that the notebooks' prose and the Markdown pages cite is in the repository.

What counts as a citation (run outputs such as `runs/demo/claims.md` or `metrics.json` are not):

- a Markdown link or image `[text](target)` that is not a URL: resolved from the citing file's folder,
  as a renderer does; a `#fragment` into a Markdown page must name one of its headings;
- a path in inline code or a code block whose first part is a top-level entry of the repository
  (`nbs/...`, `tests/...`, `configs/...`) or `..`: resolved from the repository root (from the citing
  file for `..`); a pytest node id `tests/x.py::test_name[...]` must also name a test of that file;
- a Markdown page named in capitals (`README.md`, `RELIABILITY.md`), as the repository names its pages:
  at the repository root or beside the citing file.

Placeholders (`<run>`, `{train,val}`, `*`) are not files, and are skipped. "In the repository" means
tracked by git (staged counts), so an untracked local copy does not hide a missing file.
"""

import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
PAGE = re.compile(r"(?<![\w/.-])([A-Z][A-Z0-9_]*\.md)\b")
PLACEHOLDER = re.compile(r"[<>{}*$~\\]")


def _tracked() -> set:
    "Tracked files (and their folders) relative to the root; the files on disk outside a git checkout."
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        files = set(out.splitlines())
    except (OSError, subprocess.CalledProcessError):
        files = {str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts}
    dirs = {str(Path(f).parents[i]) for f in files for i in range(len(Path(f).parts) - 1)}
    return files | dirs


def documents():
    "(file, text) of every top-level and docs/ Markdown page and of every notebook's markdown cells."
    for p in sorted([*ROOT.glob("*.md"), *ROOT.glob("docs/**/*.md")]):
        yield p, p.read_text()
    for p in sorted(ROOT.glob("nbs/**/*.ipynb")):
        if ".ipynb_checkpoints" in p.parts:
            continue
        cells = json.loads(p.read_text())["cells"]
        yield p, "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def citations(text: str, top_level: set):
    "The citations in `text`: (kind, cited string), kind 'link', 'path' or 'page'."
    found = [("link", t) for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]
    code = FENCE.findall(text) + INLINE.findall(FENCE.sub("", text))
    for chunk in code:
        for tok in chunk.split():
            tok = tok.strip("'\"(),;:")
            first = tok.split("/")[0]
            if "/" in tok and (first in top_level or first == "..") and not PLACEHOLDER.search(tok):
                found.append(("path", tok))
    found += [("page", t) for t in PAGE.findall(text)]
    return found


def _slug(heading: str) -> str:
    "The anchor a Markdown renderer (GitHub) gives a heading."
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _problem(doc: Path, kind: str, cited: str, tracked: set):
    "Why `cited` (from `doc`) does not resolve to a file of the repository; None when it does."
    target, _, frag = cited.partition("#") if kind == "link" else (cited, "", "")
    target, _, node = target.partition("::")
    if kind == "link" or target.startswith(".."):
        candidates = [doc.parent / target]
    elif kind == "page":
        candidates = [ROOT / target, doc.parent / target]
    else:
        candidates = [ROOT / target]
    for c in candidates:
        c = c.resolve()
        rel = str(c.relative_to(ROOT)) if c.is_relative_to(ROOT) else None
        if rel is None or rel.rstrip("/") not in tracked:
            continue
        if frag and c.suffix == ".md":
            heads = {_slug(h) for h in re.findall(r"^#+ (.+)$", c.read_text(), re.M)}
            if frag not in heads:
                return f"{rel} has no heading with anchor #{frag}"
        if node and f"def {node.split('[')[0]}(" not in c.read_text():
            return f"{rel} has no test {node.split('[')[0]}"
        return None
    return f"not in the repository (looked for {', '.join(str(c.resolve()) for c in candidates)})"


def test_citations_are_found():
    "The extractor sees each kind of citation, and skips URLs, placeholders and run outputs."
    top = {"nbs", "tests", "configs"}
    text = (
        "See `DESIGN.md` and [papers](../docs/papers.md#where) and ![f](figures/a.png), also "
        "[web](https://x.org/a.md) and [here](#x); `runs/demo/claims.md`, `metrics.json`, `nbs/<k>.ipynb`,\n"
        "`tests/test_x.py::test_y[a-1]` and `python -m cskd finetune -c configs/a.yaml`.\n"
        "```bash\npapermill nbs/experiments/pipeline.ipynb runs/p.ipynb -f configs/pipeline_ava.yaml\n```\n"
    )
    test = [
        ("link", "../docs/papers.md#where"),
        ("link", "figures/a.png"),
        ("path", "nbs/experiments/pipeline.ipynb"),
        ("path", "configs/pipeline_ava.yaml"),
        ("path", "tests/test_x.py::test_y[a-1]"),
        ("path", "configs/a.yaml"),
        ("page", "DESIGN.md"),
    ]
    assert sorted(citations(text, top)) == sorted(test)


def test_problems_are_named():
    "A missing file, a missing heading and a missing test are each reported; present ones pass."
    tracked = _tracked()
    doc = ROOT / "nbs" / "24_attention.ipynb"
    assert _problem(doc, "link", "../docs/method.md", tracked) is None
    assert _problem(doc, "page", "README.md", tracked) is None
    assert "not in the repository" in _problem(doc, "page", "DESIGN.md", tracked)
    assert "not in the repository" in _problem(doc, "link", "../shared/PAPERS.md", tracked)
    assert "no heading" in _problem(doc, "link", "../docs/method.md#no-such-section", tracked)
    assert "no test test_nothing" in _problem(doc, "path", "tests/test_docs.py::test_nothing", tracked)
    assert _problem(doc, "path", "tests/test_docs.py::test_problems_are_named", tracked) is None


def test_every_cited_file_exists():
    tracked = _tracked()
    top_level = {p.split("/")[0] for p in tracked}
    bad = []
    for doc, text in documents():
        for kind, cited in citations(text, top_level):
            why = _problem(doc, kind, cited, tracked)
            if why:
                bad.append(f"{doc.relative_to(ROOT)}: {kind} {cited!r}: {why}")
    assert not bad, "files cited but not in the repository:\n" + "\n".join(sorted(set(bad)))
