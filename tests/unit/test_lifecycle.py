"""The lifecycle kernel: states, the transition table, the named sets — and that no other
module re-declares a set of states or compares a state with a raw string (issue 14)."""

from __future__ import annotations

import ast
import importlib.util
from enum import StrEnum
from pathlib import Path

import pytest

from backfleet import lifecycle
from backfleet.db import models
from backfleet.lifecycle import (
    TERMINAL,
    TRANSITIONS,
    MigrationState,
    RangeState,
    ReembedState,
    allowed_next,
)

ROOT = Path(__file__).resolve().parents[2]
#: the packages whose code must take its states from backfleet/lifecycle.py
SCANNED = ("backfleet", "coordinator", "workers")
KERNEL = ROOT / "backfleet" / "lifecycle.py"

ENUMS: tuple[type[StrEnum], ...] = (MigrationState, RangeState, ReembedState)
STATE_VALUES = frozenset(str(s) for enum in ENUMS for s in enum)


def named_sets() -> dict[str, tuple[StrEnum, ...]]:
    """Every module-level tuple of states the kernel declares."""
    return {
        name: value
        for name, value in vars(lifecycle).items()
        if isinstance(value, tuple) and value and all(isinstance(v, StrEnum) for v in value)
    }


# --- the states and the table -----------------------------------------------------------


def test_values_are_the_strings_stored_in_postgres() -> None:
    assert {s.name: s.value for s in MigrationState} == {
        "PLANNED": "planned",
        "BACKFILLING": "backfilling",
        "CATCHING_UP": "catching_up",
        "VERIFIED": "verified",
        "CANARY": "canary",
        "LIVE": "live",
        "FINALIZED": "finalized",
        "PAUSED": "paused",
        "ROLLED_BACK": "rolled_back",
        "CANCELLED": "cancelled",
        "SUPERSEDED": "superseded",
    }
    assert [s.value for s in RangeState] == ["pending", "running", "done", "failed", "cancelled"]
    assert [s.value for s in ReembedState] == ["pending", "done", "failed"]
    # a row read back as a plain string compares equal, and prints as before
    from_db = str.lower("PAUSED")  # a plain str, as a row reads back
    assert from_db == MigrationState.PAUSED and f"{MigrationState.PAUSED}" == from_db
    assert type(str(RangeState.DONE)) is str


def test_db_models_re_exports_the_kernel_enums() -> None:
    assert models.MigrationState is MigrationState
    assert models.RangeState is RangeState
    assert models.ReembedState is ReembedState


def test_every_state_has_an_entry_and_every_target_is_a_state() -> None:
    assert set(TRANSITIONS) == set(MigrationState)
    for source, targets in TRANSITIONS.items():
        assert isinstance(source, MigrationState)
        assert all(isinstance(t, MigrationState) for t in targets), source


def test_terminal_states_have_no_way_out_and_are_the_only_ones() -> None:
    assert set(TERMINAL) == {s for s, targets in TRANSITIONS.items() if not targets}
    for state in TERMINAL:
        assert allowed_next(state) == frozenset()


def test_every_state_is_reachable_from_planned_and_can_end() -> None:
    seen = {MigrationState.PLANNED}
    todo = [MigrationState.PLANNED]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(MigrationState)

    def ends(state: MigrationState, path: frozenset[MigrationState]) -> bool:
        if state in TERMINAL:
            return True
        return any(ends(n, path | {n}) for n in TRANSITIONS[state] if n not in path)

    assert all(ends(s, frozenset({s})) for s in MigrationState)


def test_allowed_next_takes_a_plain_string_as_read_from_the_database() -> None:
    assert allowed_next("live") == {
        MigrationState.FINALIZED,
        MigrationState.ROLLED_BACK,
        MigrationState.SUPERSEDED,
    }
    assert allowed_next("no-such-state") == frozenset()


# --- the named sets -----------------------------------------------------------------------


def test_named_sets_are_states_without_duplicates() -> None:
    sets = named_sets()
    assert {
        "ALIAS_OWNING",
        "CLAIMABLE",
        "PAUSABLE",
        "CATCHUP_ALLOWED",
        "STARTABLE",
        "FILLING",
        "DUAL_WRITING",
        "SWITCHABLE",
        "VERIFY_FIRST",
        "ROLLBACKABLE",
        "TERMINAL",
        "OPEN_RANGES",
    } <= set(sets)
    for name, states in sets.items():
        enum = type(states[0])
        assert enum in ENUMS and all(type(s) is enum for s in states), name
        assert len(set(states)) == len(states), name


def test_named_sets_agree_with_each_other() -> None:
    # a migration whose ranges workers claim owns its alias, is filled and dual-written
    assert set(lifecycle.CLAIMABLE) <= set(lifecycle.ALIAS_OWNING)
    assert set(lifecycle.CLAIMABLE) <= set(lifecycle.FILLING) <= set(lifecycle.DUAL_WRITING)
    # nothing over for good owns an alias, is written, or can be switched
    for name in ("ALIAS_OWNING", "FILLING", "DUAL_WRITING", "SWITCHABLE", "STARTABLE"):
        assert not set(getattr(lifecycle, name)) & set(TERMINAL), name
    # each action's states allow the move it makes
    assert all(MigrationState.PAUSED in TRANSITIONS[s] for s in lifecycle.PAUSABLE)
    assert all(MigrationState.CANCELLED in TRANSITIONS[s] for s in lifecycle.FILLING)
    assert all(MigrationState.ROLLED_BACK in TRANSITIONS[s] for s in lifecycle.ROLLBACKABLE)
    assert all(MigrationState.VERIFIED in TRANSITIONS[s] for s in lifecycle.VERIFY_FIRST)
    assert set(lifecycle.VERIFY_FIRST) <= set(lifecycle.SWITCHABLE)
    assert MigrationState.BACKFILLING in TRANSITIONS[MigrationState.PLANNED]  # start


def test_alias_index_where_is_revision_0004s_frozen_text() -> None:
    path = ROOT / "migrations" / "versions" / "0004_source_claims_reembeds.py"
    spec = importlib.util.spec_from_file_location("rev0004", path)
    assert spec is not None and spec.loader is not None
    rev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rev)
    assert models.ACTIVE_ALIAS_WHERE == lifecycle.alias_owning_where() == rev.ACTIVE_WHERE


# --- no state written outside the kernel --------------------------------------------------


def _enum_aliases(tree: ast.Module) -> set[str]:
    names = {e.__name__ for e in ENUMS}
    aliases = set(names)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            aliases |= {a.asname for a in node.names if a.name in names and a.asname}
    return aliases


def _is_state(node: ast.expr, aliases: set[str]) -> bool:
    """A state literal (``"paused"``) or an enum member (``MigrationState.PAUSED``, ``S.LIVE``)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value in STATE_VALUES
    if isinstance(node, ast.Attribute) and node.attr.isupper():
        base = node.value
        return (isinstance(base, ast.Name) and base.id in aliases) or (
            isinstance(base, ast.Attribute) and base.attr in aliases
        )
    return False


def _literal_slices(tree: ast.Module) -> set[int]:
    """``Literal[...]`` annotations (task outcomes such as "done" are not range states)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript):
            value = node.value
            name = value.id if isinstance(value, ast.Name) else getattr(value, "attr", "")
            if name == "Literal":
                out |= {id(n) for n in ast.walk(node.slice)}
    return out


def state_offences(path: Path, source: str) -> list[str]:
    """Collections of two or more states, and comparisons of a state with a raw string."""
    tree = ast.parse(source, filename=str(path))
    aliases = _enum_aliases(tree)
    skip = _literal_slices(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        elements: list[ast.expr] = []
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            elements = list(node.elts)
        elif isinstance(node, ast.Dict):
            elements = [k for k in node.keys if k is not None]
        line = getattr(node, "lineno", 0)
        if sum(_is_state(e, aliases) for e in elements) >= 2:
            found.append(f"{path}:{line}: a set of states: {ast.unparse(node)[:80]}")
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            raw = [o for o in operands if isinstance(o, ast.Constant) and _is_state(o, aliases)]
            if raw and any("state" in ast.unparse(o) for o in operands if o not in raw):
                found.append(f"{path}:{line}: raw state string: {ast.unparse(node)[:80]}")
    return found


def scanned_files(root: Path) -> list[Path]:
    files = [p for pkg in SCANNED for p in sorted((root / pkg).rglob("*.py"))]
    return [p for p in files if p.resolve() != KERNEL]


def test_no_module_outside_the_kernel_declares_states() -> None:
    files = scanned_files(ROOT)
    assert len(files) > 50  # the scan sees the code
    offences = [o for p in files for o in state_offences(p.relative_to(ROOT), p.read_text())]
    assert offences == [], "\n".join(offences)


@pytest.mark.parametrize(
    "code",
    [
        "RUNNABLE = (MigrationState.BACKFILLING, MigrationState.CATCHING_UP)",
        "from backfleet.db.models import MigrationState as S\nX = {S.LIVE, S.CANARY}",
        "q = Migration.state.in_(('backfilling', 'catching_up'))",
        "ok = m.state == 'paused'",
        "ok = Event.to_state != 'paused'",
        "T = {MigrationState.PLANNED: 1, MigrationState.LIVE: 2}",
    ],
)
def test_the_check_sees_sets_and_raw_comparisons(code: str) -> None:
    assert state_offences(Path("x.py"), code)


@pytest.mark.parametrize(
    "code",
    [
        'Outcome = Literal["done", "failed", "paused"]',
        'for side in ("live", "shadow"): pass',
        'names.append((live, "live"))',
        "ok = m.state == MigrationState.PAUSED",
        'role = "live" if x else "shadow"',
    ],
)
def test_the_check_leaves_other_strings_alone(code: str) -> None:
    assert state_offences(Path("x.py"), code) == []


def test_the_kernel_module_imports_only_the_standard_library() -> None:
    tree = ast.parse(KERNEL.read_text())
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert {name.split(".")[0] for name in imported} <= {"__future__", "collections", "enum"}
