"""Griffe extensions for the API reference (mkdocs.yml): the code's plain-text documentation, shown as written.

The code documents itself in plain text, not in a docstring dialect, and mkdocstrings renders docstrings
as Markdown. Two extensions bridge the gap without rewriting the sources:

- FieldComments: dataclass fields, protocol attributes and module constants are documented with
  comments (`joints: torch.Tensor   # (4, 22, 3) global joint positions`), which griffe does not read.
  An attribute without a docstring gets the text of its comments: the full-line comments directly above
  it (no blank line between) and the comment at the end of its first (and last) line.
- PlainTextDocstrings: `plain_text_to_markdown` keeps a docstring's layout where Markdown would reflow
  it: indented blocks (field tables, formulas) stay preformatted, a list after a text line stays a
  list, and `>>>` examples become Python console blocks.

Runs only at docs build time; nothing in the package imports it.
"""
from __future__ import annotations

import io
import re
import tokenize
from functools import cache
from pathlib import Path

import griffe

LIST_ITEM = re.compile(r"^(?:[-*+]|\d+[.)])\s")
FENCE = "```"


@cache
def _comments(path: str) -> dict[int, tuple[str, bool]]:
    """line number -> (comment text, whether the comment is the whole line) for one source file."""
    found = {}
    source = Path(path).read_text(encoding="utf-8")
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            found[row] = (tok.string.lstrip("#").strip(), not lines[row - 1][:col].strip())
    return found


def _is_text(comment: str) -> bool:
    """Rulers (`# -----`), pragmas (`# noqa`, `# type: ignore`) and empty comments are not documentation."""
    return any(c.isalnum() for c in comment) and not comment.startswith(("noqa", "type:", "pragma", "fmt:"))


def field_comment(path: str, first_line: int, last_line: int) -> str:
    """The documentation of the statement on lines first_line..last_line (1-based) of `path`."""
    comments = _comments(path)
    above = []
    row = first_line - 1
    while row in comments and comments[row][1]:
        above.insert(0, comments[row][0])
        row -= 1
    # the end of the first and of the last line: comments inside a multi-line value describe its entries
    trailing = [comments[r][0] for r in sorted({first_line, last_line}) if r in comments and not comments[r][1]]
    return " ".join(c for c in above + trailing if _is_text(c))


def plain_text_to_markdown(text: str) -> str:
    """A plain-text docstring (already dedented) as Markdown that shows the same layout.

    - a run of `>>>` / `...` lines becomes a ```pycon block;
    - a run of indented lines that does not continue a list item becomes a ```text block (dedented);
    - a list item right after a text line gets the blank line Markdown needs to start a list.
    Text already inside a ``` fence is left alone.
    """
    lines = text.split("\n")
    out: list[str] = []
    in_fence = False
    in_list = False         # the last non-blank line outside a block belonged to a list item
    i = 0

    def block(kind: str, body: list[str]) -> None:
        if out and out[-1].strip():
            out.append("")
        out.extend([FENCE + kind, *body, FENCE, ""])

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(FENCE):
            in_fence = not in_fence
            out.append(line)
            i += 1
            continue
        if in_fence:
            out.append(line)
            i += 1
            continue
        if stripped.startswith(">>>"):
            run = []
            while i < len(lines) and lines[i].strip().startswith((">>>", "...")):
                run.append(lines[i].strip())
                i += 1
            block("pycon", run)
            in_list = False
            continue
        if line[:1].isspace() and stripped and not in_list:
            run = []
            while i < len(lines) and (lines[i][:1].isspace() or not lines[i].strip()):
                run.append(lines[i])
                i += 1
            while run and not run[-1].strip():      # trailing blank lines stay outside the block
                run.pop()
                i -= 1
            indent = min(len(r) - len(r.lstrip()) for r in run if r.strip())
            block("text", [r[indent:] for r in run])
            continue
        if LIST_ITEM.match(line):
            if not in_list and out and out[-1].strip():
                out.append("")
            in_list = True
        elif not stripped or not line[:1].isspace():      # a blank line or a text line ends the list
            in_list = False
        out.append(line)
        i += 1
    return "\n".join(out).rstrip("\n")


class FieldComments(griffe.Extension):
    def on_attribute_instance(self, *, node, attr, agent=None, **kwargs) -> None:
        if attr.docstring is not None or attr.filepath is None or attr.lineno is None:
            return
        text = field_comment(str(attr.filepath), attr.lineno, attr.endlineno or attr.lineno)
        if text:
            attr.docstring = griffe.Docstring(text, lineno=attr.lineno, endlineno=attr.endlineno, parent=attr)


class PlainTextDocstrings(griffe.Extension):
    def on_instance(self, *, node, obj, agent=None, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain_text_to_markdown(obj.docstring.value)
