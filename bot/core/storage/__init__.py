"""Where backup copies live: one interface, one module per backend."""

from bot.core.storage.base import CopyWriter, Storage, StoredObject

__all__ = ["CopyWriter", "Storage", "StoredObject", "build_storages"]


def build_storages(settings: "object") -> list[Storage]:
    """Every configured destination, local first. Backends import their SDKs lazily."""
    from bot.config import Settings
    from bot.core.storage.local import LocalStorage

    assert isinstance(settings, Settings)
    storages: list[Storage] = [LocalStorage(settings.backup_dir)]
    if settings.s3 is not None:
        from bot.core.storage.s3 import S3Storage

        storages.append(S3Storage(settings.s3))
    return storages
