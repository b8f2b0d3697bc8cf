"""docs/migrating-from-gitops-reverser.md says only what is true: every test it names exists, and
every chart key, flag, condition reason and metric in its tables is the one the chart, the
command line and the code have. The behaviour behind each row is proved by the test named next
to it; this module keeps the names honest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.integration.test_switching import DASHBOARD_METRICS, NOT_SERVED
from tests.packaging.test_packaging import V017_READ, V017_REFUSED
from tests.unit.test_cli import run_parser

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "migrating-from-gitops-reverser.md"
TEST_REFERENCE = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")
SHORT_REFERENCE = re.compile(r"`::(test_\w+)`")
CODE = re.compile(r"`([^`]+)`")


def section(title: str) -> str:
    text = GUIDE.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def rows(title: str) -> list[list[str]]:
    """The table of a section, header and separator left out, as lists of cells."""
    table = [line for line in section(title).splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in table[2:]]


def code_in(cell: str) -> list[str]:
    return CODE.findall(cell)


def test_every_test_the_guide_names_exists() -> None:
    text = GUIDE.read_text()
    references = TEST_REFERENCE.findall(text)
    assert len(references) >= 20
    for path, name in references:
        source = ROOT / path
        assert source.is_file(), path
        assert re.search(rf"^def {name}\(", source.read_text(), re.MULTILINE), f"{path}::{name}"
    packaging = (ROOT / "tests" / "packaging" / "test_packaging.py").read_text()
    for name in SHORT_REFERENCE.findall(text):
        assert re.search(rf"^def {name}\(", packaging, re.MULTILINE), name


def test_chart_table_lists_exactly_the_v017_keys_the_chart_tests_render() -> None:
    keys = {code_in(row[0])[0] for row in rows("Chart values")}
    assert keys == set(V017_READ) | set(V017_REFUSED)


def test_flags_table_names_reverserd_flags_that_exist() -> None:
    known = {flag for action in run_parser()._actions for flag in action.option_strings}
    found = 0
    for row in rows("Flags"):
        for code in code_in(row[1]):
            for flag in re.findall(r"--[a-z][a-z-]*", code):
                assert flag in known, flag
                found += 1
    assert found >= 10


def reverserd_string_literals() -> set[str]:
    literals: set[str] = set()
    for path in (ROOT / "reverserd").rglob("*.py"):
        literals |= set(re.findall(r'"([A-Z][A-Za-z]+)"', path.read_text()))
    return literals


def test_every_reverserd_reason_in_the_table_is_one_the_code_sets() -> None:
    literals = reverserd_string_literals()
    reasons = [reason for row in rows("Condition reasons") for reason in code_in(row[2])]
    assert len(reasons) >= 20
    for reason in reasons:
        assert reason in literals, reason


@pytest.mark.parametrize("column", [0, 2])
def test_metrics_table_matches_what_reverserd_serves(column: int) -> None:
    source = (ROOT / "reverserd" / "metrics.py").read_text()
    served = {name.removesuffix("_count") for name in DASHBOARD_METRICS}
    for row in rows("Metrics"):
        names = code_in(row[column])
        if row[2] == "not served":
            for name in code_in(row[0]):
                assert name in NOT_SERVED, name
            for replacement in re.findall(r"(?:gitopsreverser|reverserd)_\w+", row[4]):
                assert f'"{replacement}"' in source, replacement
            continue
        for name in names:
            assert name in served, name
            assert f'"{name}"' in source, name
    listed = {name for row in rows("Metrics") for name in code_in(row[0])}
    assert served | set(NOT_SERVED) == listed


def test_readme_contents_link_the_guide() -> None:
    readme = (ROOT / "README.md").read_text()
    contents = readme[readme.index("## Contents") : readme.index("## How it works")]
    assert "(docs/migrating-from-gitops-reverser.md)" in contents
