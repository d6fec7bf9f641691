"""A generation job's engine, started on first use and shared by every shard the job works on."""

from __future__ import annotations

import logging
import time

from dialogclip.generate.backend import (
    EngineTarget,
    GenerationBackend,
    create_backend,
    resolve_backend,
    resolve_engine,
)
from dialogclip.generate.config import GenerateConfig, MachineSettings, generator_settings

log = logging.getLogger(__name__)


class LazyEngine:
    """A job's generation engine, started on first use and then shared by every shard the job
    works on (its own, then those it works ahead on): the start-up, tens of seconds on a GPU, is
    paid at most once per job, and not at all when every chunk is already made.

    ``target``: its backend, device and dtype (default: resolved from ``machine`` and
    ``config`` on first use, :func:`resolve_engine`). ``backend``: an engine that is already
    open (the caller's): used as it is, never closed here. ``model_path``: a local copy of the
    generator's model to load instead of its config id and revision (the fetched folder,
    dialogclip.models.vlm_weights); the rows still record the config's id and revision.
    """

    def __init__(
        self,
        generator: str,
        config: GenerateConfig,
        machine: MachineSettings,
        target: EngineTarget | None = None,
        backend: GenerationBackend | None = None,
        model_path: str | None = None,
    ) -> None:
        self._target = backend.target if backend is not None else target
        self._model_path = model_path
        self._generator = generator
        self._config = config
        self._machine = machine
        self._backend = backend
        self._owned = backend is None
        self.start_s: float | None = None  # seconds building it (None: not built here)

    @property
    def target(self) -> EngineTarget:
        if self._target is None:
            backend = resolve_backend(self._machine.backend)
            self._target = resolve_engine(backend, self._config, self._machine)
        return self._target

    @property
    def started(self) -> bool:
        return self._backend is not None

    def get(self) -> GenerationBackend:
        """The engine, built now if this is its first use."""
        if self._backend is None:
            settings = generator_settings(self._generator, self._config)
            begin = time.perf_counter()
            self._backend = create_backend(
                self.target,
                self._generator,
                self._model_path or settings.model,
                None if self._model_path else settings.revision,
                self._config,
                self._machine,
            )
            self.start_s = time.perf_counter() - begin
            log.info("engine started in %.1f s", self.start_s)
        return self._backend

    def close(self) -> float | None:
        """Close the engine if it was built here; returns the seconds that took (else None)."""
        if not self._owned or self._backend is None:
            return None
        begin = time.perf_counter()
        self._backend.close()
        self._backend = None
        return time.perf_counter() - begin
