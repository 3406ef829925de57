"""Property-based tests of the one validation path: generated manifests of the four kinds, around the
valid space (tests/infra/manifest_strategies.py), are accepted or refused with a named field, never
with a traceback; the same documents as YAML files, broken the ways files break (a key twice, bytes
that are not UTF-8, NaN, square brackets, a kind that is not text), through ``earthops run --dry-run``
exit 0 or 2 with the file named, never 1. Whether the API server agrees is the differential test's
part (tests/integration/test_kube_differential.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from earthops.api import KINDS, ManifestError, load_manifests, parse_resource
from earthops.control.cli import app
from tests.infra.manifest_strategies import manifests

pytestmark = pytest.mark.unit

#: A refusal names the resource, then the field path (or the document's kind or apiVersion).
NAMES_A_FIELD = re.compile(r'^x\.yaml: \S+ "[^"]*": (spec|metadata|kind|apiVersion)([.\[][^:]*)?: \S')
SETTINGS = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_generated_manifest_is_accepted_or_refused_naming_its_field(kind):
    @SETTINGS
    @given(manifests(kind))
    def check(doc: dict[str, Any]) -> None:
        try:
            resource = parse_resource(doc, "x.yaml")
        except ManifestError as exc:
            assert exc.problems
            for problem in exc.problems:
                assert NAMES_A_FIELD.match(problem), problem
                assert "\n" not in problem
            return
        assert resource.kind == kind and resource.name == doc["metadata"]["name"]
        # what was accepted survives the trip through its own wire form
        assert parse_resource(resource.wire(), "x.yaml").wire() == resource.wire()

    check()


def _break(text: str, how: str, data: st.DataObject) -> bytes:
    """The YAML text of a manifest, broken one way files break."""
    lines = text.splitlines()
    if how == "duplicate key":
        i = data.draw(st.sampled_from([i for i, line in enumerate(lines) if re.match(r"^\s*[A-Za-z]+:", line)]))
        lines.insert(i + 1, lines[i])
    elif how == "not utf-8":
        i = data.draw(st.integers(0, len(lines) - 1))
        return ("\n".join(lines[:i]) + "\n").encode() + b"# caf\xe9\n" + ("\n".join(lines[i:]) + "\n").encode()
    elif how == "nan":
        numbers = [i for i, line in enumerate(lines) if re.search(r": -?[0-9.]+$", line)]
        if numbers:
            i = data.draw(st.sampled_from(numbers))
            lines[i] = re.sub(r": -?[0-9.]+$", f": {data.draw(st.sampled_from(['.nan', '.inf', '-.inf']))}", lines[i])
    elif how == "square brackets":
        strings = [i for i, line in enumerate(lines) if re.search(r": [A-Za-z][\w.-]*$", line)]
        if strings:
            i = data.draw(st.sampled_from(strings))
            lines[i] = re.sub(r": ([A-Za-z][\w.-]*)$", r": '[bold]\1[/bold] [-180, 180]'", lines[i])
    elif how == "kind not text":
        lines = [re.sub(r"^kind: (\w+)$", data.draw(st.sampled_from([r"kind: [\1]", "kind: {a: 1}", "kind: 7",
                                                                     "kind: null"])), line) for line in lines]
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_broken_file_exits_2_naming_the_file_and_never_crashes(kind, tmp_path):
    runner = CliRunner()
    store = (tmp_path / "store").as_uri()

    @settings(SETTINGS, max_examples=40)
    @given(doc=manifests(kind), how=st.sampled_from(["as it is", "duplicate key", "not utf-8", "nan",
                                                     "square brackets", "kind not text"]), data=st.data())
    def check(doc: dict[str, Any], how: str, data: st.DataObject) -> None:
        path: Path = tmp_path / "m.yaml"
        path.write_bytes(_break(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), how, data))
        result = runner.invoke(app, ["run", "--dry-run", "-f", str(path), "--store", store])
        assert result.exit_code in (0, 2), (result.exit_code, result.output, result.exception)
        assert "Traceback" not in result.output
        if result.exit_code == 2:
            assert str(path) in result.stderr, result.stderr
            try:
                load_manifests([path])
            except ManifestError as exc:
                for problem in exc.problems:  # printed as they are: no markup eats square brackets
                    assert problem in result.stderr, (problem, result.stderr)

    check()
