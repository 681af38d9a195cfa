"""The Slack app manifest is valid for Slack and asks for no more than the bot needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "manifest.yml"
# The repository is cloned next to shared/, which holds Slack's published manifest schema.
SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "slack" / "manifest.schema.json"

# Anything beyond this set needs a reason written down before it is added here.
ALLOWED_BOT_SCOPES = {"commands", "chat:write", "usergroups:read", "users:read"}


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    with MANIFEST.open(encoding="utf-8") as f:
        loaded = yaml.safe_load(f)
    assert isinstance(loaded, dict), f"{MANIFEST} must hold a YAML mapping"
    return loaded


def test_manifest_matches_slack_schema(manifest: dict[str, Any]) -> None:
    # GIVEN Slack's manifest schema, which must be present (a silent skip would hide drift)
    assert SCHEMA.is_file(), (
        f"Slack manifest schema not found at {SCHEMA}; "
        "clone the repository next to the shared/ directory"
    )
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    # WHEN the manifest is validated THEN every error is reported, not just the first
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_manifest_declares_exactly_the_backup_command(manifest: dict[str, Any]) -> None:
    commands = manifest["features"]["slash_commands"]
    assert [c["command"] for c in commands] == ["/backup"]
    assert commands[0]["description"].strip()
    assert "restore <id>" in commands[0]["usage_hint"]


def test_manifest_enables_interactivity_and_socket_mode(manifest: dict[str, Any]) -> None:
    settings = manifest["settings"]
    assert settings["interactivity"]["is_enabled"] is True
    assert settings["socket_mode_enabled"] is True
    assert settings["org_deploy_enabled"] is False
    assert settings["token_rotation_enabled"] is False


def test_manifest_asks_only_for_minimal_bot_scopes(manifest: dict[str, Any]) -> None:
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"commands", "chat:write"} <= scopes
    assert scopes <= ALLOWED_BOT_SCOPES, f"unexpected scopes: {sorted(scopes - ALLOWED_BOT_SCOPES)}"
    assert "user" not in manifest["oauth_config"]["scopes"], "the bot needs no user-token scopes"


def test_manifest_subscribes_to_no_events(manifest: dict[str, Any]) -> None:
    # The app registers no event listeners; subscribing would only widen what Slack sends it.
    assert "event_subscriptions" not in manifest["settings"]


def test_manifest_bot_user_is_backupbot(manifest: dict[str, Any]) -> None:
    bot_user = manifest["features"]["bot_user"]
    assert bot_user == {"display_name": "backupbot", "always_online": True}
    assert manifest["display_information"]["name"] == "backupbot"
