"""Mutation testing: one-line changes to the code (a flipped comparison, an off-by-one, a skipped check, a
swapped pair, ...) run against that code's tests; a mutant the tests do not notice is a weakness of the tests.

    python scripts/mutation.py --area serve            # serve | io | student | cli | all
    python scripts/mutation.py --area io --list        # the sampled mutants, nothing run
    python scripts/mutation.py --area cli --sample 0   # every mutant, not a sample
    python scripts/mutation.py --area serve --jobs 2 --out mutation-results
    python scripts/mutation.py --area serve --rerun    # only what the last run in --out did not catch

How (docs/testing.md has the numbers):
- Mutants come from the AST of each area's source files, one change each, written back into the file's own
  text so only that spot changes (operators: see OPERATORS). Each mutant's id is a hash of its file, operator
  and text (not its line number), so ids and the seeded sample stay the same while code elsewhere moves.
- An area's mutants are a deterministic sample (the `--sample` lowest hashes of seed + id; --sample 0: all).
- Everything runs in a scratch copy of the repository (--work, default a temporary folder) put first on
  PYTHONPATH: the checkout is never mutated. A run first executes the area's tests once with a line tracer
  (in-process and in every Python subprocess the tests start) to learn which tests execute which lines.
  Each mutant then runs `pytest -x -q` on the tests that can see it (tests_for): those executing its line,
  plus every test of a file whose fixture set-up executes it, or every test of the area when it runs at
  import time; fastest first. A mutant on a line no test executes survives without a run. Each run has a
  timeout from the traced durations.
- Outcomes: killed (a test failed or collection broke), survived, timeout (counted as killed, listed),
  equivalent (listed in scripts/mutation_equivalent.json with the reason: no test can tell it apart).
- Writes OUT/<area>.json (counts, each mutant's outcome by id, each survivor with file:line, the original and
  mutated line) and prints a summary table. --rerun runs only what that file's run did not catch.
"""
from __future__ import annotations

import argparse
import ast
import atexit
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT_FILE = Path(__file__).resolve().parent / "mutation_equivalent.json"

# area -> (source files, the test files that should catch their mutants)
AREAS: dict[str, tuple[list[str], list[str]]] = {
    "serve": (
        ["motionstreamer/serve/scheduler.py", "motionstreamer/serve/app.py", "motionstreamer/serve/protocol.py",
         "motionstreamer/serve/service.py"],
        ["tests/test_serve_scheduler.py", "tests/test_serve_protocol.py", "tests/test_serve_isolation.py",
         "tests/test_serve_limits.py", "tests/test_hostile_inputs.py"],
    ),
    "io": (
        ["motionstreamer/io/bvh.py", "motionstreamer/io/gltf.py", "motionstreamer/io/smpl.py",
         "motionstreamer/io/rig.py", "motionstreamer/io/motion_io.py", "motionstreamer/io/commands.py",
         "motionstreamer/representation/ik.py", "motionstreamer/representation/feet.py"],
        ["tests/test_io_bvh.py", "tests/test_io_cli.py", "tests/test_io_exports.py", "tests/test_io_conventions.py",
         "tests/test_representation_ik_feet.py", "tests/test_runtime_cli.py", "tests/test_hostile_inputs.py"],
    ),
    "student": (
        ["motionstreamer/train/distill.py", "motionstreamer/models/few_step.py",
         "motionstreamer/eval/head_quality.py"],
        ["tests/test_distill.py", "tests/test_distill_runtime.py", "tests/test_distill_references.py",
         "tests/test_checkpoints_io.py", "tests/test_cli_vocabulary.py"],
    ),
    "cli": (
        ["motionstreamer/runtime/policy.py", "motionstreamer/runtime/commands.py"],
        ["tests/test_hostile_inputs.py", "tests/test_runtime_cli.py", "tests/test_cli_guards.py",
         "tests/test_cli_vocabulary.py"],
    ),
}

# The operators; each yields at most a handful of mutants per node.
OPERATORS = {
    "cmp": "comparison flipped at the boundary or negated: < <=, > >=, == !=, in / not in, is / is not",
    "const": "integer constant (or a whole float >= 1) one up and one down",
    "bool_const": "True <-> False",
    "not": "a `not` removed",
    "and_or": "and <-> or",
    "arith": "+ <-> -, * <-> /, += <-> -=, a unary minus removed",
    "minmax": "min <-> max",
    "anyall": "any <-> all",
    "args": "the first two positional arguments of a call swapped (unless both are literals)",
    "if_false": "an `if` (or `elif`) check removed: its branch never taken",
    "raise": "a raise removed",
    "return": "an early return (not the last statement) removed",
    "check_call": "a call to a check (check/validate/require/ensure/verify in its name) removed",
}

CMP_SWAP = {ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">"),
            ast.Eq: ("==", "!="), ast.NotEq: ("!=", "=="), ast.In: ("in", "not in"), ast.NotIn: ("not in", "in"),
            ast.Is: ("is", "is not"), ast.IsNot: ("is not", "is")}
ARITH_SWAP = {ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "/"), ast.Div: ("/", "*")}
CHECK_CALL = re.compile(r"(check|validate|require|ensure|verify)", re.IGNORECASE)


@dataclass
class Mutant:
    id: str
    file: str
    line: int                 # first line changed (1-based)
    end_line: int
    operator: str
    original: str             # the changed lines, as they are
    mutated: str              # and as the mutant has them
    scope: str                # "function": runs inside a function body; "import": runs when the module loads
    span: tuple[int, int]     # the statement whose execution the tracer looks for


# ---------------------------------------------------------------- mutant generation


def _char_col(line: str, byte_col: int) -> int:
    return len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="replace"))


class _Generator(ast.NodeVisitor):
    def __init__(self, rel: str, text: str):
        self.rel, self.text = rel, text
        self.lines = text.splitlines(keepends=True)
        self.tree = ast.parse(text)
        self.found: list[tuple[str, int, int, list[str], tuple[int, int], str]] = []
        self.stmt: ast.stmt | None = None
        self.func_depth = 0
        self.skip_ids: set[int] = set()
        for node in ast.walk(self.tree):
            # no mutants in annotations, docstrings, f-strings, `if __name__ == "__main__"` / TYPE_CHECKING
            for ann in ([getattr(node, "annotation", None), getattr(node, "returns", None)]):
                if ann is not None:
                    self.skip_ids.update(id(n) for n in ast.walk(ann))
            # literal data tables (six or more constants: joint radii, channel layouts) are data, not logic
            elts = node.values if isinstance(node, ast.Dict) else getattr(node, "elts", None) \
                if isinstance(node, (ast.List, ast.Tuple, ast.Set)) else None
            if elts is not None and len(elts) >= 6 and all(
                    isinstance(e, ast.Constant) or (isinstance(e, ast.UnaryOp) and isinstance(e.operand, ast.Constant))
                    for e in elts):
                self.skip_ids.update(id(n) for n in ast.walk(node))
            if isinstance(node, ast.JoinedStr):
                self.skip_ids.update(id(n) for n in ast.walk(node))
            if isinstance(node, ast.If) and ("__name__" in ast.unparse(node.test)
                                             or "TYPE_CHECKING" in ast.unparse(node.test)):
                self.skip_ids.update(id(n) for n in ast.walk(node))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)) and node.body:
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                        and isinstance(first.value.value, str):
                    self.skip_ids.add(id(first))

    # -- helpers
    def _seg(self, node) -> tuple[int, int, int] | None:
        """(line index, start char, end char) of a node on one line."""
        if node.lineno != node.end_lineno:
            return None
        line = self.lines[node.lineno - 1]
        return node.lineno - 1, _char_col(line, node.col_offset), _char_col(line, node.end_col_offset)

    def _span(self) -> tuple[int, int]:
        s = self.stmt
        if isinstance(s, (ast.If, ast.While)):
            return s.lineno, s.test.end_lineno
        if isinstance(s, (ast.For, ast.AsyncFor)):
            return s.lineno, s.iter.end_lineno
        if isinstance(s, (ast.With, ast.AsyncWith)):
            return s.lineno, s.items[-1].context_expr.end_lineno
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return s.lineno, s.body[0].lineno - 1
        if isinstance(s, ast.Try):
            return s.lineno, s.lineno
        return s.lineno, s.end_lineno

    def _scope(self) -> str:
        if self.func_depth == 0 or isinstance(self.stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return "import"
        return "function"

    def _replace_in_line(self, op: str, idx: int, start: int, end: int, new: str) -> None:
        line = self.lines[idx]
        self.found.append((op, idx + 1, idx + 1, [line[:start] + new + line[end:]], self._span(), self._scope()))

    def _replace_between(self, op: str, left, right, old: str, new: str) -> None:
        """Replace the operator token `old` between two operands on one line."""
        if left.end_lineno != right.lineno:
            return
        idx = left.end_lineno - 1
        line = self.lines[idx]
        a, b = _char_col(line, left.end_col_offset), _char_col(line, right.col_offset)
        gap = line[a:b]
        pattern = r"\s+".join(re.escape(w) for w in old.split())
        if old.isalpha() or " " in old:
            pattern = r"(?<![A-Za-z_])" + pattern + r"(?![A-Za-z_])"
        m = re.search(pattern, gap)
        if m is None:
            return
        self._replace_in_line(op, idx, a + m.start(), a + m.end(), new)

    def _replace_stmt(self, op: str, node: ast.stmt, new: str) -> None:
        """Replace a whole statement (its lines) by `new` at the same indentation, keeping the line count."""
        first, last = node.lineno - 1, node.end_lineno - 1
        line = self.lines[first]
        if line[:_char_col(line, node.col_offset)].strip():     # shares its line with something else
            return
        indent = line[:_char_col(line, node.col_offset)]
        after = self.lines[last][_char_col(self.lines[last], node.end_col_offset):]
        if after.strip() and not after.strip().startswith("#"):
            return
        new_lines = [indent + new + "\n"] + ["\n"] * (last - first)
        self.found.append((op, first + 1, last + 1, new_lines, self._span(), self._scope()))

    # -- statements
    def generic_visit(self, node):
        if id(node) in self.skip_ids:
            return
        if isinstance(node, ast.stmt):
            outer, self.stmt = self.stmt, node
            self._statement(node)
            is_func = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if is_func:
                # decorators, defaults: evaluated when the def runs (import time for module-level defs)
                for child in [*node.decorator_list, *node.args.defaults, *node.args.kw_defaults]:
                    if child is not None:
                        self.visit(child)
                self.func_depth += 1
                for child in node.body:
                    self.visit(child)
                self.func_depth -= 1
            else:
                super().generic_visit(node)
            self.stmt = outer
            return
        self._expression(node)
        super().generic_visit(node)

    def visit_Lambda(self, node):       # its body runs when called: a function scope
        self.func_depth += 1
        self._expression(node)
        ast.NodeVisitor.generic_visit(self, node)
        self.func_depth -= 1

    def _statement(self, node) -> None:
        if isinstance(node, ast.If):
            header = self.lines[node.lineno - 1]
            keyword = "elif" if header.lstrip().startswith("elif") else "if"
            first, last = node.lineno - 1, node.test.end_lineno - 1
            tail = self.lines[last][_char_col(self.lines[last], node.test.end_col_offset):]
            if not tail.lstrip().startswith(":"):
                return
            indent = header[:len(header) - len(header.lstrip())]
            rest = tail.lstrip()[1:]
            new = [f"{indent}{keyword} False:{rest if rest.strip() else chr(10)}"] + ["\n"] * (last - first)
            self.found.append(("if_false", first + 1, last + 1, new, self._span(), self._scope()))
        elif isinstance(node, ast.Raise):
            self._replace_stmt("raise", node, "pass")
        elif isinstance(node, ast.Return) and self.func_depth > 0:
            if not self._is_last(node):
                self._replace_stmt("return", node, "pass")
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            name = ast.unparse(node.value.func).split(".")[-1]
            if CHECK_CALL.search(name):
                self._replace_stmt("check_call", node, "pass")
        elif isinstance(node, ast.AugAssign) and type(node.op) in ARITH_SWAP:
            old, new = ARITH_SWAP[type(node.op)]
            self._replace_between("arith", node.target, node.value, old + "=", new + "=")

    def _is_last(self, node) -> bool:
        for parent in ast.walk(self.tree):
            if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)) and parent.body and parent.body[-1] is node:
                return True
        return False

    # -- expressions
    def _expression(self, node) -> None:
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for i, op in enumerate(node.ops):
                old, new = CMP_SWAP[type(op)]
                self._replace_between("cmp", operands[i], operands[i + 1], old, new)
        elif isinstance(node, ast.BoolOp):
            old, new = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
            if node.lineno == node.end_lineno:
                seg = self._seg(node)
                idx, a, b = seg
                line = self.lines[idx]
                # every `and` (or `or`) of this node, between its values
                parts, cursor = [], a
                for left, right in zip(node.values, node.values[1:]):
                    la, rb = _char_col(line, left.end_col_offset), _char_col(line, right.col_offset)
                    gap = line[la:rb]
                    parts.append(line[cursor:la] + re.sub(rf"\b{old}\b", new, gap, count=1))
                    cursor = rb
                parts.append(line[cursor:b])
                self._replace_in_line("and_or", idx, a, b, "".join(parts))
        elif isinstance(node, ast.UnaryOp):
            seg, inner = self._seg(node), self._seg(node.operand)
            if seg is None or inner is None:
                return
            if isinstance(node.op, ast.Not):
                text = self.lines[inner[0]][inner[1]:inner[2]]
                if not isinstance(node.operand, (ast.Name, ast.Attribute, ast.Call, ast.Subscript)):
                    text = f"({text})"
                self._replace_in_line("not", seg[0], seg[1], seg[2], text)
            elif isinstance(node.op, ast.USub) and not isinstance(node.operand, ast.Constant):
                self._replace_in_line("arith", seg[0], seg[1], seg[2], self.lines[inner[0]][inner[1]:inner[2]])
        elif isinstance(node, ast.BinOp) and type(node.op) in ARITH_SWAP:
            if any(isinstance(v, (ast.JoinedStr,)) or (isinstance(v, ast.Constant) and isinstance(v.value, str))
                   for v in (node.left, node.right)):
                return
            old, new = ARITH_SWAP[type(node.op)]
            self._replace_between("arith", node.left, node.right, old, new)
        elif isinstance(node, ast.Constant) and (seg := self._seg(node)) is not None:
            value = node.value
            if isinstance(value, bool):
                self._replace_in_line("bool_const", *seg, str(not value))
            elif isinstance(value, int):
                for v in (value + 1, value - 1):
                    self._replace_in_line("const", *seg, str(v) if v >= 0 else f"({v})")
            elif isinstance(value, float) and value >= 1 and value == int(value) and value < 1e15:
                for v in (value + 1, value - 1):
                    self._replace_in_line("const", *seg, repr(v))
        elif isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in ("min", "max", "any", "all"):
                other = {"min": "max", "max": "min", "any": "all", "all": "any"}[node.func.id]
                op = "minmax" if node.func.id in ("min", "max") else "anyall"
                self._replace_in_line(op, *self._seg(node.func), other)
            # the first two positional arguments, unless both are literals (a list of names, a shape)
            args = node.args[:2]
            if len(args) == 2 and not any(isinstance(a, ast.Starred) for a in args) \
                    and not all(isinstance(a, ast.Constant) for a in args):
                sl, sr = self._seg(args[0]), self._seg(args[1])
                if sl is not None and sr is not None and sl[0] == sr[0]:
                    line = self.lines[sl[0]]
                    lt, rt = line[sl[1]:sl[2]], line[sr[1]:sr[2]]
                    if lt != rt:
                        self._replace_in_line("args", sl[0], sl[1], sr[2], rt + line[sl[2]:sr[1]] + lt)


def mutants_for_file(rel: str, root: Path = ROOT) -> list[Mutant]:
    text = (root / rel).read_text(encoding="utf-8")
    gen = _Generator(rel, text)
    gen.visit(gen.tree)
    # a mutant must parse and change the AST: checked on its top-level statement alone (fast; the
    # statements around it are untouched)
    tops = [(min([n.lineno for n in getattr(t, "decorator_list", [])] + [t.lineno]), t.end_lineno)
            for t in gen.tree.body]
    original_dump: dict[tuple[int, int], str] = {}
    out, seen = [], {}
    for op, first, last, new_lines, span, scope in gen.found:
        top = next(((a, b) for a, b in tops if a <= first and last <= b), (1, len(gen.lines)))
        if top not in original_dump:
            original_dump[top] = ast.dump(ast.parse("".join(gen.lines[top[0] - 1:top[1]])))
        lines = gen.lines[top[0] - 1:first - 1] + new_lines + gen.lines[last:top[1]]
        try:
            changed = ast.dump(ast.parse("".join(lines))) != original_dump[top]
        except SyntaxError:
            continue
        if not changed:
            continue
        before = "".join(gen.lines[first - 1:last])
        after = "".join(new_lines)
        key = f"{rel}|{op}|{before.strip()}|{after.strip()}"
        n = seen[key] = seen.get(key, -1) + 1
        mid = hashlib.sha1(f"{key}|{n}".encode()).hexdigest()[:12]
        out.append(Mutant(mid, rel, first, last, op, before.removesuffix("\n"), after.removesuffix("\n"), scope, span))
    return out


def apply_mutant(m: Mutant, text: str) -> str:
    lines = text.splitlines(keepends=True)
    assert "".join(lines[m.line - 1:m.end_line]).removesuffix("\n") == m.original, f"{m.file}:{m.line} changed"
    new = [ln + "\n" for ln in m.mutated.split("\n")]
    return "".join(lines[:m.line - 1] + new + lines[m.end_line:])


def area_mutants(area: str, sample: int, seed: int) -> tuple[list[Mutant], int]:
    """The area's sampled mutants (sorted by file and line) and how many there are in all."""
    everything = [m for rel in AREAS[area][0] for m in mutants_for_file(rel)]
    if sample and sample < len(everything):
        ranked = sorted(everything, key=lambda m: hashlib.sha1(f"{seed}|{m.id}".encode()).hexdigest())
        chosen = ranked[:sample]
    else:
        chosen = everything
    return sorted(chosen, key=lambda m: (m.file, m.line, m.id)), len(everything)


# ---------------------------------------------------------------- line tracer (a pytest plugin + sitecustomize)

_TRACE_TARGETS: set[str] = set()
_TRACE_HITS: dict[str, set] = {}
_TRACE_CONTEXT = ["import"]


def _local_tracer(frame, event, arg):
    if event == "line":
        _TRACE_HITS.setdefault(_TRACE_CONTEXT[0], set()).add((frame.f_code.co_filename, frame.f_lineno))
    return _local_tracer


def _global_tracer(frame, event, arg):
    return _local_tracer if frame.f_code.co_filename in _TRACE_TARGETS else None


def _start_tracing() -> None:
    if _TRACE_TARGETS:                    # sitecustomize started it already (the pytest process itself)
        return
    root = os.environ["MUTATION_TRACE_ROOT"]
    _TRACE_TARGETS.update(os.path.join(root, rel) for rel in os.environ["MUTATION_TRACE_FILES"].split(os.pathsep))
    sys.settrace(_global_tracer)
    threading.settrace(_global_tracer)
    atexit.register(_dump_trace)


def _dump_trace() -> None:
    sys.settrace(None)
    threading.settrace(None)
    out = Path(os.environ["MUTATION_TRACE_DIR"]) / f"{os.getpid()}-{time.monotonic_ns()}.json"
    root = os.environ["MUTATION_TRACE_ROOT"] + os.sep
    data = {ctx: sorted([f[len(root):], ln] for f, ln in hits) for ctx, hits in list(_TRACE_HITS.items())}
    out.write_text(json.dumps(data))


def start_subprocess_tracing() -> None:
    """From sitecustomize: a Python process the tests started records its lines under the test that started it."""
    _TRACE_CONTEXT[0] = os.environ.get("MUTATION_TRACE_CONTEXT", "import")
    _start_tracing()


def _set_context(ctx: str) -> None:
    _TRACE_CONTEXT[0] = ctx
    os.environ["MUTATION_TRACE_CONTEXT"] = ctx


class TracePlugin:
    """Loaded with -p in the traced run: each line is recorded under (test id, phase); durations and outcomes."""

    def __init__(self):
        self.reports: dict[str, dict] = {}
        _start_tracing()

    def _phase(self, item, phase):
        _set_context(f"{phase} {item.nodeid}")

    def pytest_runtest_setup(self, item):
        self._phase(item, "setup")

    def pytest_runtest_call(self, item):
        self._phase(item, "call")

    def pytest_runtest_teardown(self, item):
        self._phase(item, "setup")      # teardown of a module fixture: as conservative as set-up

    def pytest_runtest_logreport(self, report):
        r = self.reports.setdefault(report.nodeid, {"duration": 0.0, "failed": False})
        r["duration"] += report.duration
        r["failed"] |= report.failed

    def pytest_sessionfinish(self, session):
        _set_context("import")
        Path(os.environ["MUTATION_TRACE_DIR"], "reports.json").write_text(json.dumps(self.reports))


def pytest_configure(config):          # `-p mutation` in the traced run
    if os.environ.get("MUTATION_TRACE_DIR") and not config.pluginmanager.has_plugin("mutation-trace"):
        config.pluginmanager.register(TracePlugin(), "mutation-trace")


# ---------------------------------------------------------------- the scratch copy and the runs


def make_scratch(dest: Path) -> Path:
    """A copy of the checkout (no .git, caches, build output) with tests/js/node_modules linked, not copied."""
    repo = dest / "repo"
    if repo.exists():
        shutil.rmtree(repo)
    ignore = shutil.ignore_patterns(".git", "__pycache__", "node_modules", "build", "site", "*.egg-info",
                                    ".pytest_cache", ".ruff_cache", "mutation-results", "runs", "data")
    shutil.copytree(ROOT, repo, ignore=ignore, symlinks=True)
    node_modules = ROOT / "tests" / "js" / "node_modules"
    if node_modules.is_dir():
        (repo / "tests" / "js" / "node_modules").symlink_to(node_modules)
    # motionstreamer.kernels is the top-level kernels/ folder, mapped by the install: the same in the copy
    if not (repo / "motionstreamer" / "kernels").exists():
        (repo / "motionstreamer" / "kernels").symlink_to(repo / "kernels")
    return repo


def scratch_env(repo: Path, extra_path: list[str] = ()) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*extra_path, str(repo), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"      # a mutant of the same size and second must not reuse a .pyc
    # one thread per run: these tests use small tensors, and on a busy machine spare threads only spin
    # (the distillation fixture of tests/test_distill.py: 75 s with torch's default 2 threads, 4 s with 1)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    env.pop("MUTATION_TRACE_DIR", None)
    return env


def check_scratch(repo: Path, env: dict) -> None:
    res = subprocess.run([sys.executable, "-c", "import motionstreamer, motionstreamer.serve;"
                          "print(motionstreamer.__file__)"], env=env, cwd=repo, capture_output=True, text=True)
    if res.returncode != 0 or not res.stdout.strip().startswith(str(repo)):
        raise SystemExit(f"mutation: the scratch copy is not what Python imports ({res.stdout.strip()} "
                         f"{res.stderr.strip()[-500:]})")


def run_pytest(repo: Path, env: dict, tests: list[str], timeout: float, log: Path | None = None) -> str:
    """'passed', 'failed' (any failure or collection error) or 'timeout'."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--rootdir", str(repo),
           "-o", "addopts=", *tests]
    with open(log or os.devnull, "w") as out:
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout"
        finally:
            try:                              # servers or workers the tests left behind
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if rc == 5:
        raise SystemExit(f"mutation: no tests collected from {tests[:3]}...")
    return "passed" if rc == 0 else "failed"


@dataclass
class Trace:
    lines: dict[tuple[str, int], dict[str, set]] = field(default_factory=dict)   # (file, line) -> phase -> ids
    durations: dict[str, float] = field(default_factory=dict)
    failing: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)


def trace_area(area: str, repo: Path, work: Path) -> Trace:
    sources, tests = AREAS[area]
    tests = [t for t in tests if (repo / t).exists()]
    trace_dir = work / f"trace-{area}"
    shutil.rmtree(trace_dir, ignore_errors=True)
    trace_dir.mkdir(parents=True)
    site = work / "trace-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import os\nif os.environ.get('MUTATION_TRACE_DIR'):\n    import mutation\n"
        "    mutation.start_subprocess_tracing()\n")
    env = scratch_env(repo, [str(site), str(Path(__file__).resolve().parent)])
    env.update(MUTATION_TRACE_DIR=str(trace_dir), MUTATION_TRACE_ROOT=str(repo),
               MUTATION_TRACE_FILES=os.pathsep.join(sources), MUTATION_TRACE_CONTEXT="import")
    collect = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
                              "--rootdir", str(repo), *tests], cwd=repo, env=scratch_env(repo),
                             capture_output=True, text=True)
    order = [ln for ln in collect.stdout.splitlines() if "::" in ln]
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "mutation", "--rootdir", str(repo),
           *tests]
    subprocess.run(cmd, cwd=repo, env=env, stdout=open(work / f"trace-{area}.log", "w"), stderr=subprocess.STDOUT)
    print(f"[{area}] traced run of {len(order)} tests: {time.monotonic() - t0:.0f} s", flush=True)
    trace = Trace(order=order)
    reports = json.loads((trace_dir / "reports.json").read_text())
    trace.durations = {k: v["duration"] for k, v in reports.items()}
    trace.failing = [k for k, v in reports.items() if v["failed"]]
    for f in trace_dir.glob("*-*.json"):
        for ctx, hits in json.loads(f.read_text()).items():
            phase, _, nodeid = ctx.partition(" ")
            for rel, ln in hits:
                trace.lines.setdefault((rel, ln), {}).setdefault(phase, set()).add(nodeid or "import")
    return trace


def tests_for(m: Mutant, trace: Trace) -> tuple[list[str], bool]:
    """The tests to run against a mutant, fastest first; (tests, covered).

    A line that runs only inside test bodies can change only the tests that execute it. One that runs in a
    fixture's set-up can change every test of that test file (a module-scoped fixture; the suite has no
    session-scoped ones). One that runs at import time (module constants, defaults) can change any test:
    those executing it come first, then the rest of the area's tests."""
    phases: dict[str, set] = {}
    for ln in range(m.span[0], m.span[1] + 1):
        for phase, ids in trace.lines.get((m.file, ln), {}).items():
            phases.setdefault(phase, set()).update(ids)
    ok = [t for t in trace.order if t not in trace.failing]
    first = phases.get("call", set()) | phases.get("setup", set())
    if m.scope == "import" or "import" in phases:
        pool = ok
    elif first:
        setup_files = {t.split("::")[0] for t in phases.get("setup", ())}
        pool = [t for t in ok if t in first or t.split("::")[0] in setup_files]
    else:
        return [], False

    def duration(t):
        return trace.durations.get(t, 1.0)

    # grouped by file (a module fixture is set up once per group), the fastest executing test first
    by_file: dict[str, list[str]] = {}
    for t in sorted(pool, key=lambda t: (t not in first, duration(t))):
        by_file.setdefault(t.split("::")[0], []).append(t)
    files = sorted(by_file, key=lambda f: (by_file[f][0] not in first, duration(by_file[f][0])))
    return [t for f in files for t in by_file[f]], True


def load_equivalents() -> dict[str, dict]:
    if EQUIVALENT_FILE.exists():
        return json.loads(EQUIVALENT_FILE.read_text())
    return {}


def earlier_outcomes(area: str, args) -> dict[str, str]:
    """--rerun: the outcome of each mutant in OUT/AREA.json's run ({} without --rerun)."""
    if not args.rerun:
        return {}
    f = Path(args.out) / f"{area}.json"
    if not f.exists():
        raise SystemExit(f"--rerun: no earlier run of {area} in {f}")
    earlier = json.loads(f.read_text())
    if "outcomes" not in earlier or (earlier["seed"], earlier.get("sample", 60)) != (args.seed, args.sample):
        raise SystemExit(f"--rerun: {f} has no outcomes per mutant or another --seed/--sample; run the area in full")
    return earlier["outcomes"]


def known_outcome(m: Mutant, equivalents: dict, earlier: dict[str, str]) -> dict | None:
    """What is known of a mutant without running it: listed as equivalent, or (--rerun) caught by the earlier
    run, which stays true since tests only get added (a changed line is another mutant, with another id)."""
    if m.id in equivalents:
        return {"status": "equivalent", "why": equivalents[m.id]["why"]}
    if earlier.get(m.id) in ("killed", "timeout"):
        return {"status": earlier[m.id], "kept": True}
    return None


def run_area(area: str, args, equivalents: dict) -> dict:
    mutants, total = area_mutants(area, args.sample, args.seed)
    earlier = earlier_outcomes(area, args)
    work = Path(args.work)
    repos = [make_scratch(work / f"{area}-w{k}") for k in range(args.jobs)]
    for repo in repos:
        check_scratch(repo, scratch_env(repo))
    t0 = time.monotonic()
    trace = trace_area(area, repos[0], work)
    if trace.failing:
        print(f"[{area}] failing without a mutant, left out: {', '.join(trace.failing)}", flush=True)
    results: list[dict] = []
    free = list(repos)
    lock = threading.Lock()

    def one(m: Mutant) -> dict:
        row = {**asdict(m), "span": list(m.span)}
        if (known := known_outcome(m, equivalents, earlier)) is not None:
            return {**row, **known}
        tests, covered = tests_for(m, trace)
        if not covered:
            return {**row, "status": "survived", "tests_run": 0, "note": "no test executes this line"}
        with lock:
            repo = free.pop()
        try:
            path = repo / m.file
            original = path.read_text(encoding="utf-8")
            path.write_text(apply_mutant(m, original), encoding="utf-8")
            timeout = args.timeout_factor * sum(trace.durations.get(t, 1.0) for t in tests) + 60
            t1 = time.monotonic()
            log = work / "logs" / f"{area}-{m.id}.log"
            outcome = run_pytest(repo, scratch_env(repo), tests, timeout, log)
            path.write_text(original, encoding="utf-8")
        finally:
            with lock:
                free.append(repo)
        status = {"passed": "survived", "failed": "killed", "timeout": "timeout"}[outcome]
        if status == "killed":
            log.unlink()
        return {**row, "status": status, "tests_run": len(tests), "seconds": round(time.monotonic() - t1, 1)}

    (work / "logs").mkdir(exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        for i, row in enumerate(pool.map(one, mutants), 1):
            results.append(row)
            status = row["status"] + (" (kept)" if row.get("kept") else "")
            print(f"[{area}] {i}/{len(mutants)} {status:10s} {row['file']}:{row['line']} {row['operator']}: "
                  f"{_change(row['original'], row['mutated'], 50)}", flush=True)
    counts = {s: sum(r["status"] == s for r in results) for s in ("killed", "survived", "timeout", "equivalent")}
    non_equivalent = len(results) - counts["equivalent"]
    summary = {"area": area, "mutants_in_area": total, "sampled": len(mutants), "seed": args.seed,
               "sample": args.sample, **counts, "run_again": sum(not r.get("kept") for r in results),
               "survival_rate": round(counts["survived"] / non_equivalent, 4) if non_equivalent else 0.0,
               "minutes": round((time.monotonic() - t0) / 60, 1), "jobs": args.jobs,
               "left_out_failing_tests": trace.failing,
               "survivors": [r for r in results if r["status"] == "survived"],
               "timeouts": [r for r in results if r["status"] == "timeout"],
               "equivalents": [r for r in results if r["status"] == "equivalent"],
               "outcomes": {r["id"]: r["status"] for r in results}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{area}.json").write_text(json.dumps(summary, indent=1))
    for repo in repos:
        shutil.rmtree(repo.parent, ignore_errors=True)
    return summary


def _show(text: str, width: int = 70, start: int = 0) -> str:
    text = " ".join(text.split())
    start = max(0, min(start, len(text) - width))
    text = ("..." if start else "") + text[start:]
    return text if len(text) <= width else text[:width - 3] + "..."


def _change(original: str, mutated: str, width: int = 70) -> str:
    """`original  ->  mutated`, each cut to a window around where they first differ."""
    a, b = " ".join(original.split()), " ".join(mutated.split())
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"{_show(a, width, k - 20)}  ->  {_show(b, width, k - 20)}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--area", default="all", choices=[*AREAS, "all"])
    p.add_argument("--list", action="store_true", help="print the sampled mutants and stop")
    p.add_argument("--sample", type=int, default=60, help="mutants per area, a seeded sample (0: all)")
    p.add_argument("--seed", type=int, default=29)
    p.add_argument("--jobs", type=int, default=1, help="mutants run at once (each in its own scratch copy)")
    p.add_argument("--timeout-factor", type=float, default=3.0,
                   help="a mutant's timeout: this times the traced duration of its tests, plus 60 s")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    p.add_argument("--out", default="mutation-results", help="where AREA.json goes")
    p.add_argument("--rerun", action="store_true",
                   help="run again only what OUT/AREA.json's run did not catch (its survivors and mutants new to "
                        "the sample); the mutants it killed keep that outcome; the merged result replaces it")
    p.add_argument("--summary", action="store_true",
                   help="print the table of the AREA.json files in --out (survivors listed in "
                        "scripts/mutation_equivalent.json since then count as equivalent) and stop")
    args = p.parse_args(argv)
    if args.sample < 0 or args.jobs < 1:
        p.error("--sample must be >= 0 and --jobs >= 1")
    areas = list(AREAS) if args.area == "all" else [args.area]
    if args.list:
        for area in areas:
            mutants, total = area_mutants(area, args.sample, args.seed)
            print(f"# {area}: {len(mutants)} of {total} mutants (seed {args.seed})")
            for m in mutants:
                print(f"{m.id} {m.file}:{m.line} {m.operator:10s} {_change(m.original, m.mutated)}")
        return 0
    equivalents = load_equivalents()
    if args.summary:
        summaries = [reclassified(json.loads(f.read_text()), equivalents)
                     for area in areas if (f := Path(args.out) / f"{area}.json").exists()]
        print_table(summaries)
        return 0
    temp = None
    if args.work is None:
        temp = tempfile.mkdtemp(prefix="motionstreamer-mutation-")
        args.work = temp
    try:
        summaries = [run_area(area, args, equivalents) for area in areas]
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    print_table(summaries)
    return 0


def reclassified(summary: dict, equivalents: dict) -> dict:
    """An area's result with the survivors since listed as equivalent counted as such."""
    moved = [r for r in summary["survivors"] if r["id"] in equivalents]
    if not moved:
        return summary
    s = {**summary, "survivors": [r for r in summary["survivors"] if r["id"] not in equivalents],
         "equivalents": summary["equivalents"] + [{**r, "status": "equivalent"} for r in moved]}
    s["survived"], s["equivalent"] = len(s["survivors"]), len(s["equivalents"])
    non_equivalent = s["sampled"] - s["equivalent"]
    s["survival_rate"] = round(s["survived"] / non_equivalent, 4) if non_equivalent else 0.0
    return s


def print_table(summaries: list[dict]) -> None:
    print(f"\n{'area':8s} {'sampled':>8s} {'killed':>7s} {'timeout':>7s} {'equiv':>6s} {'survived':>8s} "
          f"{'rate':>6s} {'min':>5s}")
    for s in summaries:
        print(f"{s['area']:8s} {s['sampled']:>4d}/{s['mutants_in_area']:<4d} {s['killed']:>6d} {s['timeout']:>7d} "
              f"{s['equivalent']:>6d} {s['survived']:>8d} {100 * s['survival_rate']:5.1f}% {s['minutes']:>5.1f}")
        for r in s["survivors"]:
            print(f"    survived {r['file']}:{r['line']} [{r['id']}] {r['operator']}: "
                  f"{_change(r['original'], r['mutated'])}")


if __name__ == "__main__":
    sys.exit(main())
