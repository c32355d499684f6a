"""One proxy component, linked once per worker to the Python host, and run in a fresh instance per request.

By default every request gets its own store (memory capped) and instance, as `wasmtime serve` does:
nothing one request leaves in the guest reaches the next. Reuse is an opt-in (`reuse` > 1, `--reuse N`):
an instance then serves up to that many requests in turn, one at a time, from a pool of the worker's idle
instances (at most one per connection serving at once), and is discarded after a trap, a deadline or any
other failure; its memory cap stays the instance's, and each request gets its own deadline and fuel. A
guest that spins is stopped by the deadline (the worker's ticker advances the engine's epoch; the check is
wasmtime's, at loop heads and calls, and costs nothing more per request); one blocked in a host call ends
at the same deadline, since every blocking host call waits at most until then.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

import wasmtime
from wasmtime import component

from . import io, messages, outgoing, wasi
from .abi import Functions
from .conn import Body, Head, Response
from .hosts import Allowed
from .limits import Limits
from .table import Scope, Table
from .versions import Versions

TICK = 0.05  # seconds per epoch: a deadline is kept to within one tick
STATUS_OF_ERROR = 500  # `wasmtime serve` answers every error-code the guest sets with 500


class Outcome:
    """How a request went: `status` as sent (0: nothing was sent), and why it failed, if it did."""

    def __init__(self, status: int, failure: str = "") -> None:
        self.status, self.failure = status, failure


class _Instance:
    """One instance of the guest in a store of its own, its `handle` function, and the requests it served."""

    def __init__(self, store: Any, handle: Any) -> None:
        self.store, self.handle = store, handle
        self.served = 0


class Guest:
    """`denied`: the imports the policy denied (`wasi:random/random@0.2.0`); the host defines those
    interfaces into a linker the guest never sees, so that its calls to them trap. `fuel`: each request's
    budget, where the engine counts fuel. `allowed`: the hosts outgoing requests may reach. `reuse`: the
    requests an instance may serve (1: one)."""

    def __init__(self, engine: Any, code: Any, limits: Limits, env: list[tuple[str, str]],
                 denied: Iterable[str] = (), fuel: int | None = None, allowed: list[Allowed] | None = None,
                 reuse: int = 1) -> None:
        self.engine, self.code, self.limits, self.fuel, self.reuse = engine, code, limits, fuel, reuse
        self._idle: list[_Instance] = []  # instances that may serve another request
        self._idle_lock = threading.Lock()
        self._stopped = threading.Event()
        self.table = Table()
        self._resource_types: list[tuple[component.ResourceType, int]] = []
        self._ids: dict[str, int] = {}
        self.fns = Functions(self._resource_types)
        self.linker = component.Linker(engine)
        at = versions_of(engine, code).name
        unseen = component.Linker(engine)
        with self.linker.root() as root, unseen.root() as unseen_root:
            granted = _Granted(root, unseen_root, {name.partition("@")[0] for name in denied})
            io.define(self.fns, granted, self.table, self._add_resource, at)
            wasi.define(self.fns, granted, self.table, self._add_resource, at, env)
            with granted.add_instance(at("wasi:http/types")) as types:
                messages.define(self.fns, types, self.table, self._add_resource)
                outgoing.define_types(self.fns, types, self.table, self._add_resource)
            with granted.add_instance(at("wasi:http/outgoing-handler")) as handler:
                outgoing.define_handler(self.fns, handler, self.table, allowed or [], limits)
        self.linker.define_unknown_imports_as_traps(code)  # what the host does not serve (sockets, files)
        self.export = handler_export(engine, code)
        self._ticker: threading.Thread | None = None

    def _add_resource(self, instance: Any, name: str) -> None:
        type_id = self._ids.setdefault(name, len(self._ids) + 1)
        ty = component.ResourceType.host(type_id)
        self._resource_types.append((ty, type_id))
        instance.add_resource(name, ty, lambda _store, rep: self.table.drop(rep))

    def start_ticker(self) -> None:
        """The epoch clock of this process (call after any fork: a thread does not survive one), until
        `stop_ticker`."""
        def tick() -> None:
            while not self._stopped.wait(TICK):
                self.engine.increment_epoch()
        self._ticker = threading.Thread(target=tick, name="wasm-epoch", daemon=True)
        self._ticker.start()

    def stop_ticker(self) -> None:
        self._stopped.set()

    def handle(self, head: Head, body: Body, response: Response, scheme: str = "http") -> Outcome:
        """Run the guest's `handle` for one request; the response goes out as the guest writes it. The
        instance goes back to the idle ones only if the request went well and it may serve more."""
        scope = Scope(body.deadline, self.limits.memory)
        table = self.table
        table.enter(scope)
        out = messages.Outparam(response)

        def send_written() -> None:  # before the guest waits on the request body, what it wrote goes out
            if response.status:
                with contextlib.suppress(io.StreamFailed):  # the guest's next write says so
                    response.send_rest(body.deadline)
        body.waiting = send_written
        try:
            instance = self._take(body.deadline)
            if instance is None:
                return Outcome(0, f"the component's {self.export} has no handle function")
            request = table.add(messages.IncomingRequest(head, body, scheme))
            outparam = table.add(out)
            instance.handle(instance.store, component.ResourceHost.own(request, self._ids["incoming-request"]),
                            component.ResourceHost.own(outparam, self._ids["response-outparam"]))
            instance.served += 1
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            return Outcome(response.status if response.started else 0, _reason(str(exc), scope))
        finally:
            table.close(scope)
            table.enter(None)
        if out.error is not None:
            return Outcome(0, f"the guest answered with error-code {out.error[0]}")
        if out.interim:
            return Outcome(0, f"the guest answered with the interim status {out.interim}")
        if not out.set:
            return Outcome(0, "the guest returned without setting a response")
        if not response.finished:
            return Outcome(response.status if response.started else 0, "the guest did not finish the response body")
        try:
            response.send_rest(body.deadline)
        except io.StreamFailed as exc:
            return Outcome(response.status, str(exc))
        if instance.served < self.reuse:
            with self._idle_lock:
                self._idle.append(instance)
        return Outcome(response.status)

    def _take(self, deadline: float) -> _Instance | None:
        """An idle instance, or a new one (in a new store, with the memory cap), given this request's
        deadline and fuel (instantiating runs the guest's start under them); None if the component's
        handler export has no `handle`."""
        with self._idle_lock:
            idle = self._idle.pop() if self._idle else None
        store = idle.store if idle is not None else wasmtime.Store(self.engine)
        if self.fuel is not None:
            store.set_fuel(self.fuel)
        store.set_epoch_deadline(max(1, int((deadline - time.monotonic()) / TICK) + 1))
        if idle is not None:
            return idle
        store.set_limits(memory_size=self.limits.memory)
        instance = self.linker.instantiate(store, self.code)
        index = instance.get_export_index(store, self.export)
        handle = instance.get_export_index(store, "handle", index) if index is not None else None
        func = instance.get_func(store, handle) if handle is not None else None
        return None if func is None else _Instance(store, func)


class _Granted:
    """A linker root that defines a denied interface into `unseen` instead: left undefined for the guest."""

    def __init__(self, root: Any, unseen: Any, denied: set[str]) -> None:
        self.root, self.unseen, self.denied = root, unseen, denied

    def add_instance(self, name: str) -> Any:
        return (self.unseen if name.partition("@")[0] in self.denied else self.root).add_instance(name)


def versions_of(engine: Any, code: Any) -> Versions:
    """The versions to define the host's interfaces at for this component; ValueError if one it uses is
    newer than the host's (checked before serving, so that it fails at start, not at a request)."""
    return Versions([*code.type.imports(engine), *code.type.exports(engine)])


def handler_export(engine: Any, code: Any) -> str:
    """The component's `wasi:http/incoming-handler` export (any 0.2.x version), or ValueError."""
    names = [n for n in code.type.exports(engine) if n.startswith("wasi:http/incoming-handler@0.2.")]
    if not names:
        raise ValueError("the component does not export wasi:http/incoming-handler@0.2.x")
    return names[0]


def _reason(text: str, scope: Scope) -> str:
    if time.monotonic() >= scope.deadline:
        return "the request's deadline passed: the guest was stopped"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    cause = lines[lines.index("Caused by:") + 1:] if "Caused by:" in lines else lines[:1]
    return "the guest trapped: " + "; ".join(line.partition(": ")[2] if line[:1].isdigit() else line
                                             for line in cause)[:300]


def log(message: str) -> None:
    """One line on stderr, in one write: the workers share it."""
    os.write(sys.stderr.fileno(), f"wasmctr: {message}\n".encode(errors="replace"))
