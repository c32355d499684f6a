"""The host's resources: one table per worker process from a guest's handle (`rep`) to the Python object
behind it, and the scope of the request whose guest is running on the calling thread.

A rep is a number the guest holds; every host function looks it up here and checks its type, so a guest
that passes a handle of another kind, or one it has given away, traps instead of reaching something else.
Each request's resources are also listed in its scope and dropped together when the request ends, whatever
the guest dropped or not. Imports nothing from wasmtime.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .abi import HostTrap

T = TypeVar("T")


class Scope:
    """What the host functions of one request share: its deadline (monotonic seconds), its resources, and
    the bytes the guest has made the host keep for it (`hold`), at most `budget`."""

    def __init__(self, deadline: float, budget: int) -> None:
        self.deadline, self.budget = deadline, budget
        self.held = 0
        self.reps: set[int] = set()
        self.on_close: list[Callable[[], None]] = []
        self.outgoing = 0  # outgoing requests made (each holds a thread or a connection until the request ends)

    def hold(self, size: int) -> None:
        """Count bytes the host now keeps for the guest outside its memory (fields it built, a body written
        before it can go out); past the budget the guest traps, as it would growing its own memory."""
        self.held += size
        if self.held > self.budget:
            raise HostTrap(f"over {self.budget / (1 << 20):g} MiB held by the host for this request")

    def remaining(self) -> float:
        """Seconds left before the deadline; past it the guest traps, even inside a blocking host call."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise HostTrap("request deadline exceeded")
        return left


class Table:
    def __init__(self) -> None:
        self._items: dict[int, Any] = {}
        self._next = 1
        self._local = threading.local()
        self._lock = threading.Lock()

    @property
    def scope(self) -> Scope:
        scope: Scope | None = getattr(self._local, "scope", None)
        if scope is None:
            raise HostTrap("no request is running on this thread")
        return scope

    def enter(self, scope: Scope | None) -> None:
        self._local.scope = scope

    def add(self, item: Any) -> int:
        with self._lock:
            while self._next in self._items or self._next == 0:
                self._next = (self._next + 1) & 0xFFFFFFFF
            rep = self._next
            self._next = (self._next + 1) & 0xFFFFFFFF
            self._items[rep] = item
        self.scope.reps.add(rep)
        return rep

    def get(self, rep: int, kind: type[T]) -> T:
        item = self._items.get(rep)
        if not isinstance(item, kind) or rep not in self.scope.reps:
            raise HostTrap(f"bad {kind.__name__} handle {rep}")
        return item

    def take(self, rep: int, kind: type[T]) -> T:
        """An owned handle the guest hands back (`own<T>` parameters): it is the host's again."""
        item = self.get(rep, kind)
        self.drop(rep)
        return item

    def drop(self, rep: int) -> None:
        with self._lock:
            self._items.pop(rep, None)
        scope = getattr(self._local, "scope", None)
        if scope is not None:
            scope.reps.discard(rep)

    def close(self, scope: Scope) -> None:
        """The request is over: forget every resource it still held, then run its closing actions."""
        with self._lock:
            for rep in scope.reps:
                self._items.pop(rep, None)
        scope.reps.clear()
        for action in scope.on_close:
            action()
