"""A Poster (bot.core.jobs) that records what the jobs would post to Slack, for core tests."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from bot.render.common import to_text


@dataclass
class Post:
    ts: str
    text: str
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None

    @property
    def shown(self) -> str:
        """Everything a reader sees: the text and the blocks as plain text."""
        return self.text + "\n" + (to_text(self.blocks) if self.blocks else "")


@dataclass
class RecordingPoster:
    channel: str | None = "C0BACKUPS"
    posts: list[Post] = field(default_factory=list)
    updates: list[Post] = field(default_factory=list)
    _ts: Any = field(default_factory=lambda: itertools.count(1))

    def post(self, text: str, blocks: list[dict[str, Any]] | None = None, *, channel: str | None = None,
             thread_ts: str | None = None) -> str | None:
        ts = f"1700000000.{next(self._ts):06d}"
        self.posts.append(Post(ts, text, blocks, thread_ts))
        return ts

    def update(self, ts: str, text: str, blocks: list[dict[str, Any]] | None = None, *,
               channel: str | None = None) -> bool:
        self.updates.append(Post(ts, text, blocks, None))
        return True

    def texts(self) -> list[str]:
        return [p.shown for p in self.posts]
