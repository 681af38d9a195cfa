"""Slack listeners: each module has register(app, services)."""
