"""The streaming pipeline between pg_dump/pg_restore and storage: zstd, optional age
encryption, SHA-256 and fan-out, in constant memory and without uncompressed temp files."""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO

import zstandard

from bot.core.storage.base import CopyWriter
from bot.errors import BackupbotError, IntegrityError, StorageError

ZSTD_JOB_SIZE = 4 << 20
CHUNK = 1 << 20  # 1 MiB: large enough that per-chunk Python overhead is negligible
Progress = Callable[[int, float], None]  # (bytes written so far, seconds elapsed)


def key_id(recipients: tuple[str, ...]) -> str | None:
    """A stable, public identifier of the recipient set (never the secret key)."""
    if not recipients:
        return None
    return "age:" + hashlib.sha256(",".join(sorted(recipients)).encode()).hexdigest()[:16]


class Fanout:
    """A writable that hashes, counts and copies each chunk to every destination.

    A destination that fails is aborted and set aside; the others go on. When every
    destination has failed the write raises, which stops the dump early.
    """

    def __init__(self, writers: dict[str, CopyWriter], progress: Progress | None = None,
                 progress_every: float = 1.0) -> None:
        self.writers = dict(writers)
        self.failed: dict[str, BaseException] = {}
        self.sha = hashlib.sha256()
        self.size = 0
        self._progress = progress
        self._every = progress_every
        self._t0 = time.monotonic()
        self._last = 0.0

    def write(self, data: bytes | memoryview) -> int:
        data = bytes(data)
        self.sha.update(data)
        self.size += len(data)
        for name, w in list(self.writers.items()):
            try:
                w.write(data)
            except (BackupbotError, OSError) as exc:
                self.failed[name] = exc
                del self.writers[name]
                w.abort()
        if not self.writers:
            first = next(iter(self.failed.values()))
            raise StorageError(f"every destination failed: {getattr(first, 'message', first)}")
        if self._progress is not None:
            now = time.monotonic()
            if now - self._last >= self._every:
                self._last = now
                self._progress(self.size, now - self._t0)
        return len(data)

    def flush(self) -> None:  # zstandard calls flush on its destination
        pass

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()
        self.writers.clear()


def compression_params(level: int, threads: int) -> zstandard.ZstdCompressionParameters:
    """zstd parameters for pg_dump's custom archives.

    A custom archive written with -Z0 frames every COPY row with a 5-byte length, which costs
    plain zstd ratio. Matching at least 6 bytes with a larger hash table skips the framing noise:
    on CRM-like text, level 4 tuned so is smaller than `gzip -6` of the plain dump at about the
    CPU cost of plain level 4 (bench/, README). The content checksum lets zstd itself catch a
    corrupted frame on restore.
    """
    extra: dict[str, int] = {}
    if threads:
        # Each worker holds a job of input and its output. zstd's default (4 windows, 8 MiB here)
        # put the process at ~108 MB peak RSS; 4 MiB jobs keep it near 83 MB, independent of the
        # database's size, for 0.1% of ratio and no loss of speed (measured on bench/'s 1 GB db).
        extra["job_size"] = ZSTD_JOB_SIZE
    params = zstandard.ZstdCompressionParameters.from_level(level, threads=threads, write_checksum=1, **extra)
    if level >= 3:
        params = zstandard.ZstdCompressionParameters.from_level(
            level, threads=threads, write_checksum=1, min_match=6, hash_log=max(19, params.hash_log), **extra)
    return params


def encode(source: BinaryIO | IO[bytes], sink: Fanout, *, level: int, threads: int = 0,
           recipients: tuple[str, ...] = ()) -> int:
    """Compress (and encrypt, when recipients are given) ``source`` into ``sink``; return how
    many bytes were read (the archive's uncompressed size: what a restore must unpack)."""
    cctx = zstandard.ZstdCompressor(compression_params=compression_params(level, threads))
    if not recipients:
        read, _written = cctx.copy_stream(source, sink, read_size=CHUNK, write_size=CHUNK)  # type: ignore[arg-type]  # duck-typed writer
        return int(read)
    import pyrage

    keys = [pyrage.x25519.Recipient.from_str(r) for r in recipients]
    counted = _Counting(source)
    with cctx.stream_reader(counted, read_size=CHUNK) as compressed:  # type: ignore[arg-type]  # duck-typed reader
        pyrage.encrypt_io(_Buffered(compressed), sink, keys)
    return counted.count


class _Counting:
    """A reader that counts what passes through it."""

    def __init__(self, raw: BinaryIO | IO[bytes]) -> None:
        self.raw = raw
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.count += len(data)
        return data


class _Buffered:
    """Gives pyrage full chunks to read (zstd's reader may return short reads)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw

    def read(self, n: int = -1) -> bytes:
        return self.raw.read(n if n and n > 0 else CHUNK)

    def readinto(self, buf: bytearray | memoryview) -> int:
        data = self.raw.read(len(buf))
        buf[: len(data)] = data
        return len(data)


class HashingReader:
    """Reads a stored copy, hashing as it goes, and holds back the final chunk until the whole
    copy's SHA-256 has been checked: a consumer (pg_restore) never sees the end of a corrupt copy,
    so it cannot commit one."""

    def __init__(self, raw: BinaryIO, expected_sha256: str | None, what: str, *, prefetch: bool = False) -> None:
        self.raw = raw
        self.expected = expected_sha256
        self.what = what
        self.sha = hashlib.sha256()
        self.size = 0
        self._ahead: bytes | None = None
        self._buf = memoryview(b"")
        self._done = False
        self.failure: BaseException | None = None  # reading the copy failed (network, Ctrl-C ...)
        # prefetch: read and hash the next chunks in a second thread while the caller decompresses
        # (hashing and reading release the GIL); unpacking 1 GB measured ~0.3 s faster so.
        self._chunks: queue.Queue[tuple[bytes, BaseException | None]] | None = None
        self._stop = threading.Event()
        if prefetch:
            self._chunks = queue.Queue(4)
            self._filler = threading.Thread(target=self._fill, name="backupbot-prefetch", daemon=True)
            self._filler.start()

    def _read_and_hash(self) -> bytes:
        chunk = self.raw.read(CHUNK)
        if chunk:
            self.sha.update(chunk)
            self.size += len(chunk)
        return chunk

    def _fill(self) -> None:
        assert self._chunks is not None
        try:
            while not self._stop.is_set():
                chunk = self._read_and_hash()
                self._chunks.put((chunk, None))
                if not chunk:
                    return
        except BaseException as exc:  # handed to the reading thread
            self._chunks.put((b"", exc))

    def _next(self) -> bytes:
        if self.failure is not None:  # the prefetch thread has stopped: never wait on it again
            raise self.failure
        try:
            if self._chunks is None:
                return self._read_and_hash()
            chunk, error = self._chunks.get()
            if error is not None:
                raise error
            return chunk
        except BaseException as exc:
            # Kept so that a consumer which turns our error into its own (pyrage reports any
            # reader error as a decryption error) can be corrected: see decode().
            self.failure = exc
            raise

    def close(self) -> None:
        """Stop prefetching, then close the stored copy's reader."""
        if self._chunks is not None:
            self._stop.set()
            while self._filler.is_alive():
                try:
                    self._chunks.get(timeout=0.05)  # unblocks a filler waiting to put
                except queue.Empty:
                    pass
        close = getattr(self.raw, "close", None)
        if close:
            close()

    def read(self, n: int = -1) -> bytes:
        # Serve from the current chunk; fetch the next one only when it is used up, keeping
        # one chunk of look-ahead so that the last chunk is released only after check().
        if not self._buf:
            if self._done:
                return b""
            current = self._ahead if self._ahead is not None else self._next()
            self._ahead = self._next() if current else b""
            if not self._ahead:
                self._done = True
                self.check()
            self._buf = memoryview(current)
        if n is None or n < 0 or n >= len(self._buf):
            out, self._buf = bytes(self._buf), memoryview(b"")
        else:
            out, self._buf = bytes(self._buf[:n]), self._buf[n:]
        return out

    def readinto(self, buf: bytearray | memoryview) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def check(self) -> None:
        """Raise IntegrityError if the whole copy has been read and its hash is wrong."""
        if self._done and self.expected and self.sha.hexdigest() != self.expected:
            raise IntegrityError(
                f"{self.what} is corrupt: its SHA-256 is {self.sha.hexdigest()[:12]}…, "
                f"the catalog recorded {self.expected[:12]}…; use another copy or another backup"
            )


def load_identities(identity_file: Path | None) -> list[object]:
    import pyrage

    if identity_file is None:
        raise IntegrityError(
            "this backup is encrypted: set AGE_IDENTITY_FILE to the age secret key file to read it"
        )
    try:
        text = identity_file.read_text()
    except OSError as exc:
        raise IntegrityError(f"cannot read AGE_IDENTITY_FILE {identity_file}: {exc.strerror}") from None
    keys = [pyrage.x25519.Identity.from_str(line.strip()) for line in text.splitlines()
            if line.strip().startswith("AGE-SECRET-KEY-")]
    if not keys:
        raise IntegrityError(f"AGE_IDENTITY_FILE {identity_file} holds no age secret key")
    return keys


class DecryptError(IntegrityError):
    """age could not decrypt: a wrong key, or a copy damaged before its checksum was taken (the
    caller tells them apart by hashing the whole copy)."""


def decode(reader: HashingReader, sink: BinaryIO, *, encrypted: bool, identity_file: Path | None) -> None:
    """Decrypt (when needed) and decompress ``reader`` into ``sink``; raise IntegrityError on any
    corruption (checksum, age authentication, zstd frame)."""
    dctx = zstandard.ZstdDecompressor()
    try:
        if not encrypted:
            dctx.copy_stream(reader, sink, read_size=CHUNK, write_size=CHUNK)  # type: ignore[arg-type]  # duck-typed reader
            return
        import pyrage

        identities = load_identities(identity_file)
        with dctx.stream_writer(sink, write_size=CHUNK, write_return_read=True, closefd=False) as plain:
            pyrage.decrypt_io(reader, plain, identities)
    except IntegrityError:
        raise
    except zstandard.ZstdError as exc:
        _reraise_read_failure(reader)
        reader.check()
        raise IntegrityError(f"{reader.what} is corrupt: zstd says {exc}") from None
    except BrokenPipeError:
        raise
    except Exception as exc:
        # A failed read (network, Ctrl-C) is not the copy's fault, whatever pyrage calls it.
        _reraise_read_failure(reader)
        # age authenticates every 64 KiB chunk: a flipped bit surfaces here as a decrypt error
        # (pyrage raises a plain OSError for it, so OSError must not pass through above).
        if not encrypted:
            raise
        reader.check()
        raise DecryptError(f"{reader.what} cannot be decrypted ({exc}): wrong key or corrupt copy") from None


def _reraise_read_failure(reader: HashingReader) -> None:
    if reader.failure is not None:
        raise reader.failure


class ThreadedWriter:
    """Writes to a file from a second thread, so that decompressing one chunk and writing the
    previous one overlap (both release the GIL): unpacking a 1 GB archive measured 1.34 s in one
    thread, about 1.0 s so. A write error is kept in ``error`` and raised on the next write and
    on close, which also flushes the file. ``observe``, when given, is shown every chunk after it
    is written, in the writing thread; if it fails it is dropped (``observe_error``)."""

    def __init__(self, f: BinaryIO, depth: int = 8, observe: Callable[[bytes], None] | None = None) -> None:
        self.f = f
        self._observe = observe
        self.observe_error: Exception | None = None
        self.error: BaseException | None = None
        self._q: queue.Queue[bytes | None] = queue.Queue(depth)
        self._thread = threading.Thread(target=self._run, name="backupbot-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._q.get()) is not None:
            if self.error is None:  # after a failure keep draining: the producer must not block
                try:
                    self.f.write(chunk)
                except BaseException as exc:
                    self.error = exc
                    continue
                if self._observe is not None:
                    try:
                        self._observe(chunk)
                    except Exception as exc:  # only an optimisation watches: never fail the write
                        self._observe = None
                        self.observe_error = exc
        if self.error is None:
            try:
                self.f.flush()
            except BaseException as exc:
                self.error = exc

    def write(self, data: bytes | memoryview) -> int:
        if self.error is not None:
            raise self.error
        self._q.put(bytes(data))
        return len(data)

    def flush(self) -> None:  # zstandard calls flush on its destination; close() flushes
        pass

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error


class ProcessSink:
    """stdin of a child process; once the child stops reading (pg_restore --list reads only the
    table of contents) further data is discarded so the whole copy is still checked."""

    def __init__(self, stream: BinaryIO | None, keep_head: int = 0) -> None:
        self.stream = stream
        self.closed_early = False
        self.keep_head = keep_head  # also keep the first bytes written (an archive's TOC)
        self.head = bytearray()

    def write(self, data: bytes | memoryview) -> int:
        if len(self.head) < self.keep_head:
            self.head += data[:self.keep_head - len(self.head)]
        if self.stream is not None and not self.closed_early:
            try:
                self.stream.write(data)
            except (BrokenPipeError, ValueError):
                self.closed_early = True
        return len(data)

    def flush(self) -> None:
        if self.stream is not None and not self.closed_early:
            try:
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                self.closed_early = True

    def close(self) -> None:
        if self.stream is not None:
            try:
                self.stream.close()
            except (BrokenPipeError, ValueError):
                pass
