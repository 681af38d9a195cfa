"""Supabase-aware restore hooks (filled in by the Supabase issue); plain databases need none."""

from __future__ import annotations

from typing import Any

from bot.core.catalog import Backup


def restore_hooks(backup: Backup, dest_url: str) -> dict[str, Any]:
    """Extra keyword arguments for core.restore.restore for this backup's profile."""
    return {}
