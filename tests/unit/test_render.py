"""render(): the exact bytes of a manifest file (SPEC 3.4, scenario B.20)."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
import yaml

from reverserd.manifest.render import _dump, _manifest_dumper, render
from reverserd.manifest.sanitize import sanitize


def configmap(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cm", "namespace": "ns"},
        "data": data,
    }


def rendered_value(value: str) -> str:
    """The text after ``k:`` for ``value`` rendered as a single-line ConfigMap entry."""
    lines = render(configmap({"k": value})).decode().splitlines()
    return lines[-1].removeprefix("  k: ")


# --- whole files ----------------------------------------------------------------------------


def test_configmap_with_multiline_data_renders_exactly() -> None:
    obj = {
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {"namespace": "team-a", "name": "app-config", "labels": {"app": "web"}},
        "immutable": True,
        "data": {
            "port": "8080",
            "enabled": "true",
            "empty": "",
            "banner": "Welcome\nto the app",
            "app.properties": "mode=fast\nretries=3\n",
        },
    }
    assert render(obj) == (
        b"apiVersion: v1\n"
        b"kind: ConfigMap\n"
        b"metadata:\n"
        b"  labels:\n"
        b"    app: web\n"
        b"  name: app-config\n"
        b"  namespace: team-a\n"
        b"data:\n"
        b"  app.properties: |\n"
        b"    mode=fast\n"
        b"    retries=3\n"
        b"  banner: |-\n"
        b"    Welcome\n"
        b"    to the app\n"
        b"  empty: ''\n"
        b"  enabled: 'true'\n"
        b"  port: '8080'\n"
        b"immutable: true\n"
    )


def test_deployment_renders_like_kubectl() -> None:
    live = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "team-a",
            "uid": "9d3c",
            "resourceVersion": "512",
            "generation": 4,
            "labels": {"app": "web"},
            "annotations": {"deployment.kubernetes.io/revision": "4"},
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"creationTimestamp": None, "labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "nginx:1.27",
                            "args": ["--port", "8080"],
                            "env": [{"name": "DEBUG", "value": "no"}],
                            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                            "resources": {},
                        }
                    ],
                    "volumes": [{"name": "scratch", "emptyDir": {}}],
                },
            },
        },
        "status": {"replicas": 2},
    }
    assert render(sanitize(live)) == (
        b"apiVersion: apps/v1\n"
        b"kind: Deployment\n"
        b"metadata:\n"
        b"  labels:\n"
        b"    app: web\n"
        b"  name: web\n"
        b"  namespace: team-a\n"
        b"spec:\n"
        b"  replicas: 2\n"
        b"  selector:\n"
        b"    matchLabels:\n"
        b"      app: web\n"
        b"  strategy:\n"
        b"    type: RollingUpdate\n"
        b"  template:\n"
        b"    metadata:\n"
        b"      labels:\n"
        b"        app: web\n"
        b"    spec:\n"
        b"      containers:\n"
        b"      - args:\n"
        b"        - --port\n"
        b"        - '8080'\n"
        b"        env:\n"
        b"        - name: DEBUG\n"
        b"          value: 'no'\n"
        b"        image: nginx:1.27\n"
        b"        name: web\n"
        b"        ports:\n"
        b"        - containerPort: 8080\n"
        b"          protocol: TCP\n"
        b"        resources: {}\n"
        b"      volumes:\n"
        b"      - emptyDir: {}\n"
        b"        name: scratch\n"
    )


def test_headless_service_renders_exactly() -> None:
    live = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "db", "namespace": "team-a", "resourceVersion": "77"},
        "spec": {
            "clusterIP": "None",
            "clusterIPs": ["None"],
            "internalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP", "targetPort": 5432}],
            "selector": {"app": "db"},
            "sessionAffinity": "None",
            "type": "ClusterIP",
        },
        "status": {"loadBalancer": {}},
    }
    assert render(sanitize(live)) == (
        b"apiVersion: v1\n"
        b"kind: Service\n"
        b"metadata:\n"
        b"  name: db\n"
        b"  namespace: team-a\n"
        b"spec:\n"
        b"  clusterIP: None\n"
        b"  clusterIPs:\n"
        b"  - None\n"
        b"  ports:\n"
        b"  - name: pg\n"
        b"    port: 5432\n"
        b"    protocol: TCP\n"
        b"    targetPort: 5432\n"
        b"  selector:\n"
        b"    app: db\n"
        b"  sessionAffinity: None\n"
        b"  type: ClusterIP\n"
    )


# --- order and layout -----------------------------------------------------------------------


def test_top_level_starts_with_api_version_kind_metadata_then_sorts() -> None:
    obj = {"zeta": 1, "data": {}, "metadata": {"name": "x"}, "kind": "K", "apiVersion": "g/v1"}
    expected = b"""\
apiVersion: g/v1
kind: K
metadata:
  name: x
data: {}
zeta: 1
"""
    assert render(obj) == expected


def test_keys_below_top_level_are_sorted_even_metadata_and_kind_like_keys() -> None:
    obj = {"apiVersion": "v1", "kind": "K", "spec": {"metadata": 1, "kind": 2, "b": 3, "B": 4}}
    assert render(obj) == (
        b"apiVersion: v1\nkind: K\nspec:\n  B: 4\n  b: 3\n  kind: 2\n  metadata: 1\n"
    )


def test_key_order_of_the_input_does_not_change_the_bytes() -> None:
    forward = {"apiVersion": "v1", "kind": "K", "spec": {"a": 1, "b": {"c": 2, "d": 3}}}
    backward = {"spec": {"b": {"d": 3, "c": 2}, "a": 1}, "kind": "K", "apiVersion": "v1"}
    assert render(forward) == render(backward)


def test_sequences_sit_at_the_parent_key_indentation() -> None:
    obj = {"apiVersion": "v1", "kind": "K", "spec": {"items": [{"a": [1, [2, 3]]}]}}
    expected = b"""\
apiVersion: v1
kind: K
spec:
  items:
  - a:
    - 1
    - - 2
      - 3
"""
    assert render(obj) == expected


def test_shared_list_renders_without_anchors() -> None:
    shared = ["a", "b"]
    obj = {"apiVersion": "v1", "kind": "K", "first": shared, "second": shared}
    assert render(obj) == b"apiVersion: v1\nkind: K\nfirst:\n- a\n- b\nsecond:\n- a\n- b\n"


def test_long_strings_are_never_wrapped() -> None:
    long_text = " ".join(["word"] * 200)
    assert rendered_value(long_text) == long_text
    escaped = "\t".join(["word"] * 200)
    assert rendered_value(escaped) == '"' + escaped.replace("\t", "\\t") + '"'


# --- scalars --------------------------------------------------------------------------------


def test_literal_block_keeps_exactly_one_trailing_newline() -> None:
    assert render(configmap({"k": "a\nb\n"})).endswith(b"  k: |\n    a\n    b\n")


def test_literal_block_strips_when_there_is_no_trailing_newline() -> None:
    assert render(configmap({"k": "a\nb"})).endswith(b"  k: |-\n    a\n    b\n")


def test_literal_block_keeps_several_trailing_newlines_and_closes_the_document() -> None:
    text = render(configmap({"k": "a\n\n", "z": "end"}))
    assert text.endswith(b"  k: |+\n    a\n\n  z: end\n...\n")
    assert yaml.safe_load(text)["data"] == {"k": "a\n\n", "z": "end"}


def test_literal_block_with_leading_spaces_gets_an_indentation_indicator() -> None:
    text = render(configmap({"k": "  indented\nnot\n"}))
    assert text.endswith(b"  k: |2\n      indented\n    not\n")


def test_multiline_with_trailing_spaces_falls_back_to_double_quotes() -> None:
    assert render(configmap({"k": "a  \nb\n"})).endswith(b'  k: "a  \\nb\\n"\n')
    assert render(configmap({"k": "a\nb "})).endswith(b'  k: "a\\nb "\n')


def test_multiline_with_tabs_or_carriage_returns_falls_back_to_double_quotes() -> None:
    assert render(configmap({"k": "a\n\tb\n"})).endswith(b'  k: "a\\n\\tb\\n"\n')
    assert render(configmap({"k": "a\r\nb"})).endswith(b'  k: "a\\r\\nb"\n')


@pytest.mark.parametrize(
    "value",
    [
        # YAML 1.1 booleans, including the one-letter forms go-yaml v2 knows
        *("y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO"),
        *("on", "On", "ON", "off", "Off", "OFF", "true", "True", "TRUE", "false", "FALSE"),
        # nulls
        *("~", "null", "Null", "NULL", ""),
        # integers in every base and both YAML versions
        *("0", "42", "-7", "+1", "012", "0o17", "0O17", "0x1F", "0b101", "1_000", "1:20"),
        # floats
        *("1.5", "-.5", "1.", "1e3", "1E3", "1.0e-3", "6.8523015e+5", "1:20.5"),
        *(".inf", "-.inf", "+.Inf", ".nan", ".NaN"),
        # timestamps
        *("2024-01-01", "2024-1-2", "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10 -5"),
        # YAML 1.1 merge and value keys
        *("<<", "="),
    ],
)
def test_strings_another_yaml_reader_would_retype_are_quoted(value: str) -> None:
    assert rendered_value(value) == "'" + value + "'"
    assert yaml.safe_load(render(configmap({value: value}))) == configmap({value: value})


@pytest.mark.parametrize(
    "value",
    ["web", "None", "nginx:1.27", "10.0.0.1", "1.2.3", "v1", "0.1.0-rc1", "a b", "yes please"],
)
def test_ordinary_strings_stay_plain(value: str) -> None:
    assert rendered_value(value) == value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a: b", "'a: b'"),
        ("- item", "'- item'"),
        ("#comment", "'#comment'"),
        (" padded ", "' padded '"),
        ("it's", "it's"),
        ("'quoted'", "'''quoted'''"),
        ("*alias", "'*alias'"),
        ("@handle", "'@handle'"),
    ],
)
def test_strings_with_yaml_syntax_are_single_quoted(value: str, expected: str) -> None:
    assert rendered_value(value) == expected


def test_non_string_scalars_render_as_their_type() -> None:
    obj = {
        "apiVersion": "v1",
        "kind": "K",
        "spec": {
            "count": 3,
            "negative": -1,
            "big": 12345678901234567890,
            "ratio": 0.25,
            "huge": 1e20,
            "infinite": float("inf"),
            "on": True,
            "off": False,
            "nothing": None,
        },
    }
    assert render(obj) == (
        b"apiVersion: v1\n"
        b"kind: K\n"
        b"spec:\n"
        b"  big: 12345678901234567890\n"
        b"  count: 3\n"
        b"  huge: 1.0e+20\n"
        b"  infinite: .inf\n"
        b"  negative: -1\n"
        b"  nothing: null\n"
        b"  'off': false\n"
        b"  'on': true\n"
        b"  ratio: 0.25\n"
    )
    assert yaml.safe_load(render(obj)) == obj


def test_utf8_text_is_kept_as_it_is() -> None:
    assert rendered_value("café 日本語") == "café 日本語"
    assert render(configmap({"k": "grüße\nçava\n"})).endswith(
        "  k: |\n    grüße\n    çava\n".encode()
    )


def test_characters_only_double_quotes_can_carry_are_escaped() -> None:
    assert rendered_value("bell\x07") == '"bell\\a"'
    assert rendered_value("line\u2028separator") == '"line\\Lseparator"'
    assert rendered_value("\ufeffbom") == '"\\uFEFFbom"'
    assert rendered_value("smile \U0001f600") == '"smile \\U0001F600"'


# --- stability ------------------------------------------------------------------------------


def test_rendering_the_same_object_twice_gives_the_same_bytes() -> None:
    obj = configmap({"script": "#!/bin/sh\necho hi\n", "n": "1"})
    assert render(obj) == render(obj)


def test_rendering_the_read_back_file_gives_the_same_bytes() -> None:
    live = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "ns", "annotations": {"a": "yes"}},
        "spec": {"clusterIP": "None", "ports": [{"port": 80}], "selector": {"app": "web"}},
        "status": {},
    }
    first = render(sanitize(live))
    reread = yaml.safe_load(first)
    assert render(sanitize(reread)) == first


# Fragments that exercise every branch of style selection: indicators, quotes, whitespace,
# line breaks, numbers in every base, keywords of both YAML versions, and Unicode outside ASCII.
TRICKY_FRAGMENTS = [
    *("", " ", "  ", "\n", "\n\n", "\t", "\r", "\x00", "\x07", "\x7f", "\x85", "\xa0"),
    *("\u2028", "\u2029", "\ufeff", "é", "日本", "\U0001f600"),
    *(":", ": ", "#", " #", "-", "- ", "?", "? ", "'", '"', "\\", "|", ">", "@", "`"),
    *("!", "&", "*", "%", "{", "}", "[", "]", ",", "~", "=", "<<", "---", "..."),
    *("0", "1", "012", "0x", "0o", "0b", "1e3", ".", "e", "_", "+", "1:20", "2024-01-01"),
    *("yes", "no", "on", "off", "y", "n", "true", "null", "Null", ".inf", ".nan", "None"),
]


def tricky_strings() -> list[str]:
    pairs = ["".join(pair) for pair in itertools.product(TRICKY_FRAGMENTS, repeat=2)]
    generator = random.Random(20240501)
    longer = [
        "".join(generator.choices(TRICKY_FRAGMENTS, k=generator.randint(3, 8))) for _ in range(1000)
    ]
    return pairs + longer


def test_tricky_strings_round_trip_as_values_keys_and_list_items() -> None:
    for text in tricky_strings():
        obj = configmap({"k": text, text or "empty": "v"})
        obj["list"] = [text, {"k": text}]
        assert yaml.safe_load(render(obj)) == obj, text


# The emitters disagree on how to lay out a mapping key that holds a line break (libyaml also
# counts a carriage return as one); Kubernetes validates such keys away, so only values and
# list items may hold them here.
LINE_BREAKS = ("\n", "\r", "\x85", "\u2028", "\u2029")


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML was built without libyaml")
def test_c_and_python_emitters_write_identical_bytes() -> None:
    python_dumper = _manifest_dumper(yaml.SafeDumper)
    for text in tricky_strings():
        obj = configmap({"k": text})
        if not any(brk in text for brk in LINE_BREAKS):
            obj["data"][text or "empty"] = "v"
        obj["list"] = [text, {"k": text}]
        assert render(obj) == _dump(obj, python_dumper), text
