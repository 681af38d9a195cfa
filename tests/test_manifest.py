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


# Every interactive id the code may register, with what renders it. A new button, modal or menu
# needs a line here: Slack only delivers interactions the app was built to expect.
EXPECTED_INTERACTIONS = {
    "alert_retry": "Retry button on failure alerts (commands/alerts.py)",
    "restore_approve": "Approve button on a restore request (commands/restore.py)",
    "restore_reject": "Reject button on a restore request (commands/restore.py)",
    "restore_cancel": "Cancel button on a restore request (commands/restore.py)",
    "restore_confirm_in_place": "in-place restore confirmation modal (commands/restore.py)",
    r"^checklist_tick_\d+$": "checklist item boxes, one per item (commands/checklist.py)",
}


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[dict[str, list[str]], Any]:
    """What create_app registers on the real Bolt app, recorded as it happens."""
    import re

    from slack_bolt import App
    from slack_sdk import WebClient

    import bot.app
    from bot.config import load_settings
    from bot.services import Services

    seen: dict[str, list[str]] = {k: [] for k in ("command", "action", "view", "options", "shortcut", "event", "message")}

    def name(constraint: Any) -> str:
        if isinstance(constraint, re.Pattern):
            return constraint.pattern
        if isinstance(constraint, dict):  # e.g. {"action_id": ..., "block_id": ...}
            return name(constraint.get("action_id") or constraint.get("callback_id"))
        return str(constraint)

    def recorder(kind: str) -> Any:
        def method(self: App, constraint: Any = None, *args: Any, **kwargs: Any) -> Any:
            seen[kind].append(name(constraint))
            return getattr(App, kind)(self, constraint, *args, **kwargs)
        return method

    recording_app = type("RecordingApp", (App,), {kind: recorder(kind) for kind in seen})
    monkeypatch.setattr(bot.app, "App", recording_app)
    settings = load_settings({"DATABASE_URL": "postgresql://u@127.0.0.1:9/db", "BACKUP_DIR": str(tmp_path / "b"),
                              "BACKUPBOT_DB": str(tmp_path / "c.db"), "SLACK_BOT_TOKEN": "xoxb-manifest-test",
                              "SLACK_SIGNING_SECRET": "s", "SLACK_CHANNEL": "C0TEST"}, env_file=None)
    client = WebClient(token="xoxb-manifest-test", base_url="http://127.0.0.1:9/")  # never called
    _app, ctx = bot.app.create_app(settings, Services(settings), client=client, token_verification=False)
    ctx.jobs.shutdown(wait=False)
    return seen, ctx


def test_code_registers_exactly_the_manifest_commands_and_usage(manifest: dict[str, Any], registered: Any) -> None:
    # GIVEN the app as create_app builds it
    seen, ctx = registered
    # THEN it listens for exactly the manifest's slash commands
    assert sorted(seen["command"]) == sorted(c["command"] for c in manifest["features"]["slash_commands"])
    # AND the manifest's usage hint advertises exactly the subcommands the router knows
    hint = manifest["features"]["slash_commands"][0]["usage_hint"]
    advertised = {part.split()[0] for part in hint.split(" | ")}  # "|" inside [..] is an option
    assert advertised == set(ctx.router.subcommands)


def test_every_interaction_the_code_registers_is_expected(manifest: dict[str, Any], registered: Any) -> None:
    seen, _ctx = registered
    interactive = seen["action"] + seen["view"] + seen["options"] + seen["shortcut"]
    unexpected = sorted(set(interactive) - EXPECTED_INTERACTIONS.keys())
    assert not unexpected, f"registered but not in EXPECTED_INTERACTIONS: {unexpected}"
    assert "alert_retry" in seen["action"]
    if interactive:
        assert manifest["settings"]["interactivity"]["is_enabled"] is True
    # No event listeners, matching a manifest without event subscriptions.
    assert seen["event"] == [] and seen["message"] == []
