"""The documentation: the MkDocs site builds in strict mode, and the links of the README and of the
pages resolve (on GitHub as well as on the site).

The strict build is what CI runs: a broken link or anchor, a page under docs/ missing from the nav,
or an API reference name that does not resolve is a warning, and strict turns it into a failure.
mkdocs comes with the `docs` extra (and the `test` extra); without it the build test fails, it does
not skip: a suite that silently stops checking the docs would pass with broken pages.
"""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


# ----------------------------------------------------------------------------- links, as GitHub reads them
def github_slug(heading: str, seen: dict) -> str:
    """The anchor GitHub gives a Markdown heading (github-slugger: lower case, punctuation removed,
    spaces to '-', '-1', '-2' ... for repeats), after its inline code and links become their text."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    return slug if n == 0 else f"{slug}-{n}"


FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"`+[^`\n]*`+")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HTML_REF = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")


def anchors(md: Path) -> set:
    seen: dict = {}
    text = FENCE.sub("", md.read_text(encoding="utf-8"))
    return {github_slug(m.group(2), seen) for m in re.finditer(r"^(#{1,6})\s+(.+?)\s*#*\s*$", text, re.MULTILINE)}


def links(md: Path) -> list:
    """Every link target of a Markdown file outside code (inline links and images, reference
    definitions, HTML src/href)."""
    text = INLINE_CODE.sub("", FENCE.sub("", md.read_text(encoding="utf-8")))
    return [m.group(1) for rx in (INLINE_LINK, REFERENCE_DEF, HTML_REF) for m in rx.finditer(text)]


def broken_links(md: Path) -> list:
    """The relative links of `md` whose file does not exist, or whose #anchor is not a heading of
    the Markdown file it names: one line each."""
    bad = []
    for target in links(md):
        if SCHEME.match(target):
            continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            bad.append(f"{md.name}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{md.name}: {target} (no heading with that anchor in {dest.name})")
    return bad


def test_github_slug_follows_github():
    # github-slugger's fixtures and headings of this repository as GitHub renders them
    cases = [("Hello World", "hello-world"), ("foo.bar", "foobar"), ("Привет non-latin 你好", "привет-non-latin-你好"),
             ("Live service (`motionstreamer serve`)", "live-service-motionstreamer-serve"),
             ("Streaming training: what we chose where the original is silent",
              "streaming-training-what-we-chose-where-the-original-is-silent"),
             ("Few-step distilled head (`distill-head`)", "few-step-distilled-head-distill-head"),
             ("Scale-out on Ray Serve", "scale-out-on-ray-serve"), ("snake_case_name", "snake_case_name")]
    for heading, slug in cases:
        assert github_slug(heading, {}) == slug, heading
    seen: dict = {}
    assert [github_slug("Limits", seen) for _ in range(3)] == ["limits", "limits-1", "limits-2"]


def test_link_checker_finds_the_one_broken_link(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Streaming protocol (v1)\n")
    (tmp_path / "pic.png").write_bytes(b"")
    md = tmp_path / "page.md"
    md.write_text(
        "# Page\n\n## A section\n\n"
        "[ok](other.md) [ok anchor](other.md#streaming-protocol-v1) ![ok](pic.png) [here](#a-section)\n"
        "[web](https://example.com/x.md) <img src=\"pic.png\"> [ref]: other.md\n"
        "`[in code](missing.md)`\n```\n[in a fence](missing.md)\n```\n"
        "[bad anchor](other.md#streaming-protocol)\n")
    assert broken_links(md) == ["page.md: other.md#streaming-protocol (no heading with that anchor in other.md)"]
    md.write_text(md.read_text() + "![gone](images/gone.png)\n<a href=\"nowhere.md\">x</a>\n")
    assert broken_links(md)[1:] == ["page.md: images/gone.png (no such file)", "page.md: nowhere.md (no such file)"]


def test_readme_links_resolve():
    readme = ROOT / "README.md"
    assert links(readme), "the README links to nothing: the link check would check nothing"
    assert broken_links(readme) == []


def test_pages_links_resolve_on_github():
    """The site checks its links itself (strict build); this checks them as GitHub shows docs/*.md,
    whose anchors GitHub computes its own way."""
    pages = sorted(DOCS.rglob("*.md"))
    assert len(pages) > 10
    assert [bad for page in pages for bad in broken_links(page)] == []


# ----------------------------------------------------------------------------- the site
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """`mkdocs build --strict` into a temporary folder (run from elsewhere: nothing may depend on the
    working directory); the built site's folder."""
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
                          cwd=out, env=env, capture_output=True, text=True, timeout=600, check=False)
    if "No module named mkdocs" in proc.stderr:
        pytest.fail("mkdocs is not installed: pip install -e '.[docs]' (the test extra includes it)")
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return out


def test_strict_build_renders_every_page(site):
    for page in DOCS.rglob("*.md"):
        rel = page.relative_to(DOCS).with_suffix("")       # MkDocs' directory URLs: x.md -> x/index.html
        html = site / (rel.parent if rel.name == "index" else rel) / "index.html"
        assert html.is_file(), f"{page.relative_to(ROOT)} was not built"
    for asset in ("serve_page.png", "example_wave_jog.gif"):
        assert (site / asset).is_file()


def test_api_reference_is_generated_from_the_source(site):
    runtime = (site / "api" / "runtime" / "index.html").read_text(encoding="utf-8")
    # mkdocstrings rendered the objects (a `:::` left as text would appear verbatim instead)
    assert ":::" not in runtime
    for name in ("motionstreamer.runtime.session.StreamingSession", "motionstreamer.runtime.engine.StreamingEngine",
                 "motionstreamer.runtime.engine.FrameChunk", "motionstreamer.runtime.backend.Backend"):
        assert f'id="{name}"' in runtime, name
    # FrameChunk.joints is documented by its comment in engine.py, which griffe alone would not show
    assert "global joint positions (Y up, metres)" in runtime
    # the `>>>` example of StreamingSession's docstring is a Python console block (Pygments marks its
    # prompts), not Markdown's nested quotation
    assert "<blockquote>" not in runtime
    assert '<span class="gp">&gt;&gt;&gt; </span><span class="n">session</span>' in runtime


# ----------------------------------------------------------------------------- the griffe extension
def _extension():
    path = ROOT / "scripts" / "griffe_plain_docstrings.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plain_text_docstrings_keep_their_layout():
    ext = _extension()
    text = ("Summary line.\n\nLayout per frame:\n  [0:2]   root velocity\n    continued\n  [2:8]   heading\n"
            "Format:\n- first item\n  its continuation\n- second item\n\n"
            ">>> x = 1\n... y = 2\nAfter.\n```\n  kept as is\n```")
    expected = ("Summary line.\n\nLayout per frame:\n\n"
                "```text\n[0:2]   root velocity\n  continued\n[2:8]   heading\n```\n\n"
                "Format:\n\n- first item\n  its continuation\n- second item\n\n"
                "```pycon\n>>> x = 1\n... y = 2\n```\n\nAfter.\n```\n  kept as is\n```")
    assert ext.plain_text_to_markdown(text) == expected


def test_field_comments_become_documentation(tmp_path):
    ext = _extension()
    src = tmp_path / "m.py"
    src.write_text("class C:\n"
                   "    # ----------------------------------\n"
                   "    a: int = 1          # the first\n"
                   "\n"
                   "    # above, line one\n"
                   "    # above, line two\n"
                   "    b: str = '#not a comment'   # trailing\n"
                   "    c: dict = {\n"
                   "        'k': 1,   # an entry's comment, not c's\n"
                   "    }\n"
                   "    d: int = 0   # noqa: E501\n")
    assert ext.field_comment(str(src), 3, 3) == "the first"
    assert ext.field_comment(str(src), 7, 7) == "above, line one above, line two trailing"
    assert ext.field_comment(str(src), 8, 10) == ""
    assert ext.field_comment(str(src), 11, 11) == ""
