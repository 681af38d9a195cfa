"""Shared fixtures: real PostgreSQL clusters, a real S3 server (moto over HTTP), fake Slack."""

pytest_plugins = ["tests.fixtures.pg", "tests.fixtures.s3", "tests.fixtures.slack", "tests.fixtures.supabase_cluster"]
