"""scripts/mutation.py, the mutation runner: each operator makes the one-line change it names (checked
on a small source written here), a mutant changes nothing else, ids survive code moving elsewhere, the
sample is deterministic, and the areas name files that exist. Running mutants is not tested here (it
takes hours: docs/testing.md)."""
from __future__ import annotations

import ast
import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("mutation_runner", ROOT / "scripts" / "mutation.py")
mutation = sys.modules["mutation_runner"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutation)

SOURCE = textwrap.dedent('''\
    """A docstring: 1 < 2 is not mutated."""
    LIMIT = 600
    NAMES = (1, 2, 3, 4, 5, 6)


    def f(x: int = 3, y=None) -> bool:
        """Nor here: x == 1."""
        if x < LIMIT and not y:
            raise ValueError(f"x is {x + 1}")
        if y is None:
            return False
        check_range(x)
        z = min(x, 2) - max(y, 0)
        z += 1
        return any([z]) or -x > 0.5
''')


@pytest.fixture()
def mutants(tmp_path):
    (tmp_path / "m.py").write_text(SOURCE)
    return mutation.mutants_for_file("m.py", root=tmp_path)


def changes(mutants, op):
    return sorted((m.line, m.mutated.strip()) for m in mutants if m.operator == op)


def test_each_operator_makes_its_change(mutants):
    assert changes(mutants, "cmp") == [(8, "if x <= LIMIT and not y:"), (10, "if y is not None:"),
                                       (15, "return any([z]) or -x >= 0.5")]
    assert changes(mutants, "const") == [(2, "LIMIT = 599"), (2, "LIMIT = 601"),
                                         (6, "def f(x: int = 2, y=None) -> bool:"),
                                         (6, "def f(x: int = 4, y=None) -> bool:"), (13, "z = min(x, 1) - max(y, 0)"),
                                         (13, "z = min(x, 2) - max(y, (-1))"), (13, "z = min(x, 2) - max(y, 1)"),
                                         (13, "z = min(x, 3) - max(y, 0)"), (14, "z += 0"), (14, "z += 2")]
    assert changes(mutants, "and_or") == [(8, "if x < LIMIT or not y:"), (15, "return any([z]) and -x > 0.5")]
    assert changes(mutants, "not") == [(8, "if x < LIMIT and y:")]
    assert changes(mutants, "arith") == [(13, "z = min(x, 2) + max(y, 0)"), (14, "z -= 1"),
                                         (15, "return any([z]) or x > 0.5")]
    assert changes(mutants, "minmax") == [(13, "z = max(x, 2) - max(y, 0)"), (13, "z = min(x, 2) - min(y, 0)")]
    assert changes(mutants, "anyall") == [(15, "return all([z]) or -x > 0.5")]
    assert changes(mutants, "args") == [(13, "z = min(2, x) - max(y, 0)"), (13, "z = min(x, 2) - max(0, y)")]
    assert changes(mutants, "if_false") == [(8, "if False:"), (10, "if False:")]
    assert changes(mutants, "raise") == [(9, "pass")]
    assert changes(mutants, "return") == [(11, "pass")]                 # an early return; the last one stays
    assert changes(mutants, "check_call") == [(12, "pass")]
    assert {m.operator for m in mutants} <= set(mutation.OPERATORS)
    # never in the docstrings, the annotations, the f-string, nor the data table of six constants
    assert not any(m.line in (1, 3, 7) or "is {x" in m.mutated and "{x + 1}" not in m.mutated for m in mutants)


def test_a_mutant_changes_its_spot_only(mutants):
    original = ast.parse(SOURCE)
    for m in mutants:
        text = mutation.apply_mutant(m, SOURCE)
        assert text.count("\n") == SOURCE.count("\n")                     # line numbers kept
        changed = [i for i, (a, b) in enumerate(zip(SOURCE.splitlines(), text.splitlines())) if a != b]
        assert changed and changed[0] + 1 == m.line and changed[-1] + 1 <= m.end_line
        assert ast.dump(ast.parse(text)) != ast.dump(original)
    with pytest.raises(AssertionError, match="changed"):
        mutation.apply_mutant(mutants[0], SOURCE.replace("LIMIT = 600", "LIMIT = 601"))


def test_scopes_and_the_statement_a_tracer_looks_for(mutants):
    by_line = {m.line: m for m in mutants}
    assert by_line[2].scope == "import" and by_line[6].scope == "import"     # module constant, a default
    assert by_line[13].scope == "function" and by_line[13].span == (13, 13)
    assert by_line[8].span == (8, 8)                                         # an `if`: its header


def test_ids_survive_code_moving_and_the_sample_is_seeded(tmp_path, mutants):
    (tmp_path / "m.py").write_text("import os\n\n\n" + SOURCE)
    moved = mutation.mutants_for_file("m.py", root=tmp_path)
    assert sorted(m.id for m in moved) == sorted(m.id for m in mutants)
    assert {m.id: m.line + 3 for m in mutants} == {m.id: m.line for m in moved}
    assert len({m.id for m in mutants}) == len(mutants)
    a, total = mutation.area_mutants("cli", 10, seed=29)
    b, _ = mutation.area_mutants("cli", 10, seed=29)
    c, _ = mutation.area_mutants("cli", 10, seed=30)
    assert [m.id for m in a] == [m.id for m in b] and {m.id for m in a} != {m.id for m in c}
    assert len(a) == 10 and total > 100


def test_areas_and_equivalents_name_what_exists():
    for area, (sources, tests) in mutation.AREAS.items():
        assert all((ROOT / f).is_file() for f in sources + tests), area
    ids = {m.id for area in mutation.AREAS for rel in mutation.AREAS[area][0] for m in mutation.mutants_for_file(rel)}
    equivalents = json.loads(mutation.EQUIVALENT_FILE.read_text())
    assert equivalents and set(equivalents) <= ids                 # no stale entry: each names a current mutant
    assert all(e["why"] and e["file"] and e["original"] != e["mutated"] for e in equivalents.values())


def test_rerun_keeps_what_was_caught_and_runs_the_rest(tmp_path, mutants):
    a, b, c, d = mutants[:4]
    equivalents = {d.id: {"why": "symmetric"}}
    earlier = {a.id: "killed", b.id: "timeout", c.id: "survived", d.id: "survived"}
    assert mutation.known_outcome(a, equivalents, earlier) == {"status": "killed", "kept": True}
    assert mutation.known_outcome(b, equivalents, earlier) == {"status": "timeout", "kept": True}
    assert mutation.known_outcome(c, equivalents, earlier) is None                # a survivor runs again
    assert mutation.known_outcome(d, equivalents, earlier)["status"] == "equivalent"
    assert mutation.known_outcome(mutants[4], equivalents, earlier) is None       # new to the sample: runs
    assert mutation.known_outcome(a, {}, {}) is None                              # without --rerun: runs

    args = mutation.argparse.Namespace(rerun=True, out=str(tmp_path), seed=29, sample=60)
    with pytest.raises(SystemExit, match="no earlier run of cli"):
        mutation.earlier_outcomes("cli", args)
    (tmp_path / "cli.json").write_text(json.dumps({"seed": 29, "sample": 60}))
    with pytest.raises(SystemExit, match="no outcomes per mutant"):
        mutation.earlier_outcomes("cli", args)
    (tmp_path / "cli.json").write_text(json.dumps({"seed": 29, "sample": 60, "outcomes": earlier}))
    assert mutation.earlier_outcomes("cli", args) == earlier
    with pytest.raises(SystemExit, match="another --seed/--sample"):
        mutation.earlier_outcomes("cli", mutation.argparse.Namespace(**{**vars(args), "seed": 30}))
    assert mutation.earlier_outcomes("cli", mutation.argparse.Namespace(**{**vars(args), "rerun": False})) == {}
