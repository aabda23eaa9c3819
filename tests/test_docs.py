"""The documentation site: it builds with ``mkdocs build --strict`` (broken links and anchors, pages missing from
the nav, included files that do not exist, API objects that do not resolve: all fail), and every fenced ``python``
block in docs/ runs.

Snippets of a page run in order in one namespace, in a temporary directory, with the repository root on
``sys.path`` (so ``from examples.classifier import ...`` works, as it does from the root). A block preceded by
``<!-- skip-snippet: REASON -->`` is not run; there should be few of those (Ray clusters, long runs).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP = re.compile(r"^\s*<!--\s*skip-snippet:\s*(?P<reason>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*?)\s*$")
MAX_SKIPPED = 8  # across the site; and most snippets must run


@dataclass
class Snippet:
    page: str
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None  # the reason, when marked


def extract_snippets(text: str, page: str = "<text>") -> list[Snippet]:
    """Fenced ``python``/``py`` blocks, with their skip marks. Fences nest as in CommonMark: a block opened with
    four backticks is closed only by four or more, so an example of a fenced block inside one is not a snippet."""
    lines = text.splitlines()
    snippets: list[Snippet] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.group("indent"), m.group("fence"), m.group("info")
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = FENCE.match(lines[i])
            if close and close.group("fence")[0] == fence[0] and len(close.group("fence")) >= len(fence) \
                    and not close.group("info"):
                break
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1
        lang = info.split()[0].lower() if info else ""
        if lang not in ("python", "py"):
            continue
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        mark = SKIP.match(lines[prev]) if prev >= 0 else None
        if mark and not mark.group("reason"):
            raise ValueError(f"{page}:{prev + 1}: skip-snippet needs a reason")
        snippets.append(Snippet(page, start + 1, "\n".join(body) + "\n", mark.group("reason") if mark else None))
    return snippets


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def page_snippets() -> dict[str, list[Snippet]]:
    out = {}
    for path in pages():
        rel = str(path.relative_to(DOCS))
        found = extract_snippets(path.read_text(), rel)
        if found:
            out[rel] = found
    return out


SNIPPETS = page_snippets()


# --------------------------------------------------------------------------------------------------------------
# the extractor itself
# --------------------------------------------------------------------------------------------------------------
def test_extractor_reads_fences_and_skip_marks():
    text = "\n".join([
        "intro",
        "```python",
        "a = 1",
        "```",
        "",
        "<!-- skip-snippet: needs a Ray cluster -->",
        "",
        "```python",
        "ray_only()",
        "```",
        "```bash",
        "echo not python",
        "```",
        "````markdown",
        "```python",
        "shown_not_run()",
        "```",
        "````",
        "- a list item:",
        "",
        "    ```py",
        "    if True:",
        "        b = 2",
        "    ```",
    ])
    found = extract_snippets(text)
    assert [(s.line, s.code, s.skip) for s in found] == [
        (2, "a = 1\n", None),
        (8, "ray_only()\n", "needs a Ray cluster"),
        (21, "if True:\n    b = 2\n", None),
    ]
    with pytest.raises(ValueError, match="needs a reason"):
        extract_snippets("<!-- skip-snippet: -->\n```python\nx\n```\n")


def test_docs_have_snippets_and_few_are_skipped():
    everything = [s for found in SNIPPETS.values() for s in found]
    skipped = [f"{s.page}:{s.line} ({s.skip})" for s in everything if s.skip]
    ran = len(everything) - len(skipped)
    assert ran >= 8 and ran > len(skipped), skipped
    assert len(skipped) <= MAX_SKIPPED, skipped


# --------------------------------------------------------------------------------------------------------------
# the snippets run
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture
def docs_sandbox(tmp_path, monkeypatch):
    """A scratch working directory, the repository root importable, and the environment and sys.path restored
    (seed_everything writes PL_GLOBAL_SEED, which a later Ray test would pick up)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(ROOT)] + sys.path)
    saved = dict(os.environ)
    yield tmp_path
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    os.environ.update(saved)


@pytest.mark.parametrize("page", sorted(p for p, found in SNIPPETS.items() if any(not s.skip for s in found)))
def test_snippets_run(page, docs_sandbox, monkeypatch):
    # a real module, so that classes a snippet defines can be pickled (checkpoints, hparams) as from a script
    module = types.ModuleType(f"docs_{re.sub(r'[^0-9a-zA-Z]+', '_', page)}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    ran = 0
    for snippet in SNIPPETS[page]:
        if snippet.skip:
            continue
        code = compile(snippet.code, f"docs/{page}:{snippet.line}", "exec")
        start = time.monotonic()
        try:
            exec(code, namespace)
        except Exception:
            pytest.fail(f"docs/{page}, the snippet at line {snippet.line} failed:\n{traceback.format_exc()}")
        assert time.monotonic() - start < 30, f"docs/{page}:{snippet.line} is too slow for a docs snippet"
        ran += 1
    assert ran


# --------------------------------------------------------------------------------------------------------------
# the site builds
# --------------------------------------------------------------------------------------------------------------
def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the included pages and the generated API reference have content
    assert "Loop overhead" in (site / "benchmarks" / "loop" / "index.html").read_text()
    assert "Running raylit on a cluster" in (site / "cluster-configs" / "index.html").read_text()
    reference = (site / "reference" / "callbacks" / "index.html").read_text()
    assert "ModelCheckpoint" in reference and "every_n_train_steps" in reference


def test_every_page_is_in_the_nav():
    yaml = pytest.importorskip("yaml")

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # mkdocs' !relative and friends
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)

    def walk(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from walk(value)

    in_nav = set(walk(config["nav"]))
    on_disk = {str(p.relative_to(DOCS)) for p in pages()}
    assert in_nav == on_disk


def test_repository_paths_named_in_the_docs_exist():
    """`raylit/...`, `examples/...`, `scripts/...`, `tests/...`, `benchmarks/...` in code spans must exist (the
    layout page is the one most likely to go stale)."""
    missing = []
    pattern = re.compile(r"`((?:raylit|examples|scripts|tests|benchmarks|cluster_configs)/[\w./-]*?)(?:::\w+)?`")
    for path in pages():
        for match in pattern.finditer(path.read_text()):
            name = match.group(1).rstrip("/")
            if "*" in name or "<" in name:
                continue
            if not (ROOT / name).exists():
                missing.append(f"docs/{path.relative_to(DOCS)}: {name}")
    assert not missing, missing


def test_readme_keeps_the_quick_start_and_links_into_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert "scripts/demo.sh" in readme and "scripts/test.sh" in readme
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", readme)
    assert links, "README should link into docs/"
    for link in links:
        assert (ROOT / link).is_file(), link
    assert len(readme.splitlines()) < 120
