"""Decoding the images of upcoming chunks in a background thread pool while the engine works
on the current one (``MachineSettings.prefetch_chunks`` ahead)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from dialogclip.generate.config import DecodeSettings
from dialogclip.generate.images import DecodedImage, decode_image


class DecodePrefetcher:
    """Decodes the images of upcoming chunks in a thread pool, ``depth`` chunks ahead.

    ``take(i)`` first queues chunks ``i+1 .. i+depth`` (so they decode while the engine works
    on chunk ``i``), then blocks until chunk ``i`` is decoded.
    """

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        images: Sequence[bytes | None],
        chunks: Sequence[range],
        settings: DecodeSettings,
        depth: int,
    ) -> None:
        self._pool = pool
        self._images = images
        self._chunks = chunks
        self._settings = settings
        self._depth = max(0, depth)
        self._futures: dict[int, list[Future[DecodedImage]]] = {}

    def _submit(self, position: int) -> None:
        if position < len(self._chunks) and position not in self._futures:
            self._futures[position] = [
                self._pool.submit(decode_image, self._images[row], self._settings)
                for row in self._chunks[position]
            ]

    def take(self, position: int) -> list[DecodedImage]:
        for ahead in range(position, position + self._depth + 1):
            self._submit(ahead)
        return [future.result() for future in self._futures.pop(position)]
