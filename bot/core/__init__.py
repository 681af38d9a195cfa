"""The backup core: a library that never imports slack_bolt."""
