"""backupbot: keeps a PostgreSQL database safe."""

__version__ = "0.1.0"
