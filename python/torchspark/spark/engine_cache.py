"""The engines a Python worker keeps across its tasks: :class:`EngineCache`."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Hashable
from typing import Any


class EngineCache:
    """Up to ``size`` engines (anything with ``closed`` and ``close()``) by
    key, least recently used first out (and closed); a closed one is made
    again. Thread-safe; ``make`` runs outside the lock."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._engines: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        with self._lock:
            engine = self._engines.get(key)
            if engine is not None and not engine.closed:
                self._engines.move_to_end(key)
                return engine
            stale = self._engines.pop(key, None)
        if stale is not None:
            stale.close()  # what it still holds (a gone shared engine's segments)
        engine = make()
        with self._lock:
            self._engines[key] = engine
            while len(self._engines) > self.size:
                _, old = self._engines.popitem(last=False)
                old.close()
        return engine

    def held(self) -> list[Hashable]:
        """The keys of the engines held now."""
        with self._lock:
            return list(self._engines)

    def clear(self) -> None:
        """Close and forget every engine."""
        with self._lock:
            engines, self._engines = list(self._engines.values()), collections.OrderedDict()
        for engine in engines:
            engine.close()
