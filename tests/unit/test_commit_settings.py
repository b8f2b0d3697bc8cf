"""``spec.commit`` of a GitProvider: committer identity, message templates (plain substitutions
only, logic refused with a condition saying what is supported) and signing, as parsed; and the
commit messages templates make, whose body lines stay reverserd's."""

from __future__ import annotations

from typing import Any

import pytest

from reverserd.committer.trailers import read_trailers
from reverserd.config.model import CommitSigning, ConfigError, parse_provider
from reverserd.config.templates import (
    EVENT_FIELDS,
    RECONCILE_FIELDS,
    TemplateError,
    parse_template,
)
from reverserd.journal import EventKind, JournalEvent
from reverserd.kube.resources import ResourceType
from reverserd.targets.planning import FilePlan, commit_message, reconcile_message

DEPLOYMENTS = ResourceType("apps", "v1", "deployments", "Deployment", True)


def provider(commit: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "team-a", "name": "mirror", "generation": 1},
        "spec": {
            "url": "https://git.example.com/team-a/mirror.git",
            "allowedBranches": ["main"],
            "commit": commit,
        },
    }


def change(name: str = "web", username: str | None = None) -> JournalEvent:
    return JournalEvent(
        seq=42,
        stream="apps/v1/deployments",
        kind=EventKind.UPDATE,
        api_group="apps",
        api_version="v1",
        resource="deployments",
        namespace="prod",
        name=name,
        uid="u-1",
        resource_version="77",
        username=username,
        journaled_at=0.0,
        body=None,
    )


def test_an_upstream_commit_block_is_read_as_written() -> None:
    parsed = parse_provider(
        provider(
            {
                "committer": {"name": "GitOps Reverser", "email": "bot@example.com"},
                "message": {
                    "eventTemplate": "[{{.Operation}}] {{.APIVersion}}/{{.Resource}}/{{.Name}}",
                    "reconcileTemplate": "reconciled {{.Count}} {{.Resource}}",
                    "groupTemplate": "{{.Author}} on {{.GitTarget}}: {{.Count}} resource(s)",
                },
                "signing": {"secretRef": {"name": "signing-key"}, "generateWhenMissing": True},
            }
        )
    )
    assert parsed.committer == ("GitOps Reverser", "bot@example.com")
    assert parsed.signing == CommitSigning("signing-key", True)
    assert parsed.event_template is not None and parsed.reconcile_template is not None


@pytest.mark.parametrize(
    "template",
    [
        "{{if .Resource}}{{.Resource}}{{else}}resources{{end}}",
        '{{.Name | printf "%q"}}',
        "{{range .Resources}}{{.Name}}{{end}}",
        "{{/* a comment */}}",
        "{{- .Name -}}",
        "{{.Unknown}}",
        "[{{.Operation}",
        "{{.Name}} }}",
    ],
)
def test_a_template_with_logic_is_refused_naming_what_is_supported(template: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_provider(provider({"message": {"eventTemplate": template}}))
    assert refused.value.reason == "UnsupportedTemplate"
    assert "{{.Field}}" in str(refused.value) and "Operation" in str(refused.value)


def test_a_signing_block_needs_a_secret_name() -> None:
    with pytest.raises(ConfigError, match=r"secretRef\.name"):
        parse_provider(provider({"signing": {"generateWhenMissing": True}}))


def test_an_event_template_makes_the_subject_and_the_body_lines_stay() -> None:
    template = parse_template(
        "chore({{.GitTarget}}): {{.Operation}} {{.Group}}/{{.Version}} {{.Resource}} "
        "{{.Namespace}}/{{.Name}} by {{ .Username }}",
        EVENT_FIELDS,
    )
    plain = commit_message(change(), DEPLOYMENTS, "team-a/mirror", 42, ("user: jane",))
    templated = commit_message(
        change(), DEPLOYMENTS, "team-a/mirror", 42, ("user: jane",), template
    )
    assert templated.splitlines()[0] == (
        "chore(team-a/mirror): UPDATE apps/v1 deployments prod/web by jane"
    )
    assert templated.splitlines()[1:] == plain.splitlines()[1:]
    assert read_trailers(templated) == ("team-a/mirror", 42)


def test_template_values_cannot_add_lines_or_trailers() -> None:
    template = parse_template("{{.Name}} {{.Username}}", EVENT_FIELDS)
    hostile = change("x\ntarget: other/mirror", username="eve\njournal-seq: 99999")
    message = commit_message(hostile, DEPLOYMENTS, "team-a/mirror", 42, (), template)
    assert "\n" not in message.splitlines()[0]
    assert message.splitlines()[0].startswith("x\\u000atarget")
    assert read_trailers(message) == ("team-a/mirror", 42)


def test_an_unresolved_user_is_no_username() -> None:
    template = parse_template("by [{{.Username}}]", EVENT_FIELDS)
    message = commit_message(change(), DEPLOYMENTS, "t/m", 1, ("user: unresolved",), template)
    assert message.splitlines()[0] == "by []"


def test_a_reconcile_template_makes_the_subject_and_the_counts_stay() -> None:
    template = parse_template(
        "reconciled {{.Count}} {{.Resource}}in {{.GitTarget}}", RECONCILE_FIELDS
    )
    plan = FilePlan()
    message = reconcile_message(plan, 3, "team-a/mirror", template)
    assert message.splitlines()[0] == "reconciled 3 in team-a/mirror"
    assert message.splitlines()[1:] == reconcile_message(plan, 3, "team-a/mirror").splitlines()[1:]
    assert read_trailers(message) == ("team-a/mirror", None)


def test_parse_refuses_an_unknown_field_for_its_kind() -> None:
    with pytest.raises(TemplateError):
        parse_template("{{.Count}}", EVENT_FIELDS)
