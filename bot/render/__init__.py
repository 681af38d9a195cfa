"""Message rendering: pure functions from core results to Block Kit (and plain text)."""
