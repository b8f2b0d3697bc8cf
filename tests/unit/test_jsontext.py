"""Decoding API server JSON that nests deeper than Python's parser follows."""

from __future__ import annotations

import json

from reverserd.kube.jsontext import TOO_DEEP, UNDECODABLE, loads

DEPTH = 5000


def deep_object(name: str) -> str:
    metadata = json.dumps(
        {"name": name, "namespace": "team", "uid": f"uid-{name}", "resourceVersion": "42"}
    )
    spec = '{"a":' * DEPTH + "1" + "}" * DEPTH
    return f'{{"apiVersion":"example.com/v1","kind":"Widget","metadata":{metadata},"spec":{spec}}}'


def shallow_object(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "example.com/v1",
            "kind": "Widget",
            "metadata": {"name": name, "namespace": "team", "resourceVersion": "7"},
            "spec": {"text": 'braces } ] { [ and "quotes" inside a string'},
        }
    )


def test_ordinary_json_decodes_as_usual() -> None:
    assert loads(shallow_object("plain"))["spec"]["text"].startswith("braces")


def test_a_watch_event_too_deep_to_decode_keeps_its_type_and_identity() -> None:
    event = loads(f'{{"type":"MODIFIED","object":{deep_object("deep")}}}')

    assert event["type"] == "MODIFIED"
    assert event["object"] == {
        UNDECODABLE: TOO_DEEP,
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {
            "name": "deep",
            "namespace": "team",
            "uid": "uid-deep",
            "resourceVersion": "42",
        },
    }


def test_a_list_page_keeps_every_item_and_stands_in_only_for_the_deep_one() -> None:
    items = ",".join([shallow_object("before"), deep_object("deep"), shallow_object("after")])
    page = loads(
        '{"kind":"WidgetList","apiVersion":"example.com/v1",'
        f'"metadata":{{"resourceVersion":"99","continue":"abc"}},"items":[{items}]}}'
    )

    assert page["metadata"] == {"resourceVersion": "99", "continue": "abc"}
    assert [item["metadata"]["name"] for item in page["items"]] == ["before", "deep", "after"]
    assert UNDECODABLE in page["items"][1] and UNDECODABLE not in page["items"][0]
    assert page["items"][2]["spec"]["text"].startswith("braces")


def test_identity_is_found_after_metadata_as_deep_as_the_object() -> None:
    # Custom resources come with alphabetical metadata: managedFields before name.
    deep = '{"f:a":' * DEPTH + "{}" + "}" * DEPTH
    raw = (
        '{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"managedFields":'
        f'[{{"fieldsV1":{deep},"manager":"kubectl"}}],"name":"late \\"quoted\\" name",'
        '"namespace":"team","resourceVersion":"8","uid":"u-1"},"spec":{}}'
    )

    found = loads(raw)

    assert found[UNDECODABLE] == TOO_DEEP
    assert found["metadata"] == {
        "name": 'late "quoted" name',
        "namespace": "team",
        "uid": "u-1",
        "resourceVersion": "8",
    }
