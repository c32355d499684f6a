"""Host functions for components, with each function's value conversions built once, not per call.

wasmtime-py's `LinkerInstance.add_func` rebuilds the function's type through ctypes on every call (a
dozen foreign calls and objects per parameter, more for a `result` or `variant`, whose cases it asks for
again each time) and moves `list<u8>` one Python int per byte. Here a function's converters are made from
its type at its first call and kept; `list<u8>` crosses as whole byte strings, through one bytes slice
over the C array of values (`memmove` one way, a strided slice the other). The C API still copies one
32-byte value per byte (`wasmtime_component_val_t`): that copy, not Python, is what bounds a body's
throughput here.

Python values: integers, floats, `str`, `bytes` (for `list<u8>`), `list`, `tuple`, `dict` (records),
`set` (flags), a `str` (enums), `None` or the value (options), `(tag, payload)` (variants and results,
`"ok"`/`"err"`), and the `int` rep of a host resource (own or borrow). Imports wasmtime: loaded by the
HTTP server only, never on a light path.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime import component

HostFunc = Callable[..., Any]
Lift = Callable[[Any, Any], Any]  # (context, wasmtime_component_val_t) -> Python value; takes ownership
Lower = Callable[[Any, Any, Any], None]  # (context, Python value, wasmtime_component_val_t) -> None

VAL_SIZE = ctypes.sizeof(ffi.wasmtime_component_val_t)
VAL_OF = ffi.wasmtime_component_val_t.of.offset
U8 = ffi.WASMTIME_COMPONENT_U8.value
SCRATCH_VALUES = 65536
_scratch = threading.local()


def _scratch_buffer() -> bytearray:
    """This thread's 2 MiB of C values, each a u8 with its kind set: a list<u8> is written into it and
    copied out whole. Kept, not made per call: fresh pages cost more than the copy (page faults)."""
    buf: bytearray | None = getattr(_scratch, "buf", None)
    if buf is None:
        buf = _scratch.buf = bytearray(VAL_SIZE * SCRATCH_VALUES)
        buf[0::VAL_SIZE] = bytes([U8]) * SCRATCH_VALUES
    return buf


class HostTrap(Exception):
    """Raised by a host function to trap the guest with this message (a bad handle, a deadline)."""


class Functions:
    """The host functions of one linker: each registered with a callback that converts through converters
    made at its first call. `resource_types` maps a host resource type to its id, for `own<T>` results."""

    def __init__(self, resource_types: list[tuple[component.ResourceType, int]]) -> None:
        self._resource_types = resource_types
        self._funcs: list[tuple[HostFunc, list[Lift], Lower | None] | HostFunc] = []
        self._names: list[str] = []
        self._callback = ffi.wasmtime_component_func_callback_t(self._call)
        self._finalize = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _idx: None)
        self._lock = threading.Lock()

    def add(self, instance: component.LinkerInstance, name: str, func: HostFunc) -> None:
        self._funcs.append(func)
        self._names.append(name)
        data = name.encode()
        err = ffi.wasmtime_component_linker_instance_add_func(instance.ptr(), ctypes.create_string_buffer(data),
                                                              len(data), self._callback,
                                                              len(self._funcs) - 1, self._finalize)
        if err:
            raise wasmtime.WasmtimeError._from_ptr(err)

    def _call(self, idx: int | None, context: Any, ty: Any, args: Any, nargs: int, results: Any,
              nresults: int) -> int:
        try:
            entry = self._funcs[idx or 0]
            if not isinstance(entry, tuple):
                with self._lock:  # once, even when two requests make the first call at once
                    entry = self._funcs[idx or 0]
                    if not isinstance(entry, tuple):
                        entry = self._funcs[idx or 0] = self._compile(entry, ty)
            func, lifts, lower = entry
            value = func(*[lift(context, args[i]) for i, lift in enumerate(lifts)])
            if lower is not None:
                lower(context, value, results[0])
            return 0
        except HostTrap as exc:
            return _error(str(exc))
        except Exception as exc:  # a host bug is the guest's trap, never the process's end
            return _error(f"host function {self._names[idx or 0]} failed: {type(exc).__name__}: {exc}")

    def _compile(self, func: HostFunc, ty: Any) -> tuple[HostFunc, list[Lift], Lower | None]:
        fty = component.FuncType._from_ptr(ty, owner=self)
        result = fty.result
        return func, [self.lift(t) for _, t in fty.params], None if result is None else self.lower(result)

    # -- converters -------------------------------------------------------------------------------

    def lift(self, t: Any) -> Lift:
        """A converter from a C value of type `t` to Python; it frees what the value owned."""
        if isinstance(t, component.ListType):
            element = t.element
            if isinstance(element, component.U8):
                return _lift_bytes
            each = self.lift(element)

            def lift_list(ctx: Any, c: Any) -> list[Any]:
                items = [each(ctx, c.of.list.data[i]) for i in range(c.of.list.size)]
                ffi.wasmtime_component_vallist_delete(ctypes.byref(c.of.list))
                return items
            return lift_list
        if isinstance(t, component.OwnType | component.BorrowType):
            return _lift_resource
        if isinstance(t, component.ResultType | component.OptionType | component.VariantType):
            cases = {name: (None if p is None else self.lift(p)) for name, p in _cases(t)}
            if isinstance(t, component.OptionType):
                some = cases["some"]
                return lambda ctx, c: None if not c.of.option else _lift_boxed(ctx, c.of.option, some)
            if isinstance(t, component.ResultType):
                ok, err = cases["ok"], cases["err"]
                return lambda ctx, c: (("ok", _lift_boxed(ctx, c.of.result.val, ok)) if c.of.result.is_ok
                                       else ("err", _lift_boxed(ctx, c.of.result.val, err)))

            def lift_variant(ctx: Any, c: Any) -> tuple[str, Any]:
                tag = ffi.to_str(c.of.variant.discriminant)
                ffi.wasm_byte_vec_delete(ctypes.byref(c.of.variant.discriminant))
                return tag, _lift_boxed(ctx, c.of.variant.val, cases[tag])
            return lift_variant
        if isinstance(t, component.TupleType):
            parts = [self.lift(e) for e in t.elements]

            def lift_tuple(ctx: Any, c: Any) -> tuple[Any, ...]:
                items = tuple(p(ctx, c.of.tuple.data[i]) for i, p in enumerate(parts))
                ffi.wasmtime_component_valtuple_delete(ctypes.byref(c.of.tuple))
                return items
            return lift_tuple
        if isinstance(t, component.RecordType):
            fields = [(name, self.lift(f)) for name, f in t.fields]

            def lift_record(ctx: Any, c: Any) -> dict[str, Any]:
                items = {name: p(ctx, c.of.record.data[i].val) for i, (name, p) in enumerate(fields)}
                ffi.wasmtime_component_valrecord_delete(ctypes.byref(c.of.record))
                return items
            return lift_record
        return lambda _ctx, c: t.convert_from_c(c)  # scalars, strings, enums, flags: the binding's own

    def lower(self, t: Any) -> Lower:
        """A converter from a Python value to a C value of type `t` (which then owns what it points to)."""
        if isinstance(t, component.ListType):
            element = t.element
            if isinstance(element, component.U8):
                return _lower_bytes
            each = self.lower(element)

            def lower_list(ctx: Any, value: list[Any], out: Any) -> None:
                raw = ffi.wasmtime_component_vallist_t()
                ffi.wasmtime_component_vallist_new_uninit(raw, len(value))
                for i, item in enumerate(value):
                    each(ctx, item, raw.data[i])
                out.kind = ffi.WASMTIME_COMPONENT_LIST
                out.of.list = raw
            return lower_list
        if isinstance(t, component.OwnType | component.BorrowType):
            type_id = next((i for rt, i in self._resource_types if rt == t.ty), None)
            owned = isinstance(t, component.OwnType)

            def lower_resource(ctx: Any, rep: int, out: Any) -> None:
                if type_id is None:  # a type of the linker's traps (a file descriptor): none is ever made
                    raise HostTrap("a handle of a resource type this host does not provide")
                host = ffi.wasmtime_component_resource_host_new(owned, rep, type_id)
                anyp = ctypes.POINTER(ffi.wasmtime_component_resource_any_t)()
                err = ffi.wasmtime_component_resource_host_to_any(ctx, host, ctypes.byref(anyp))
                ffi.wasmtime_component_resource_host_delete(host)
                if err:
                    raise wasmtime.WasmtimeError._from_ptr(err)
                out.kind = ffi.WASMTIME_COMPONENT_RESOURCE
                out.of.resource = anyp
            return lower_resource
        if isinstance(t, component.ResultType | component.OptionType | component.VariantType):
            cases = {name: (None if p is None else self.lower(p)) for name, p in _cases(t)}
            if isinstance(t, component.OptionType):
                some = cases["some"]

                def lower_option(ctx: Any, value: Any, out: Any) -> None:
                    out.kind = ffi.WASMTIME_COMPONENT_OPTION
                    out.of.option = None if value is None else _boxed(ctx, value, some)
                return lower_option
            if isinstance(t, component.ResultType):
                def lower_result(ctx: Any, value: tuple[str, Any], out: Any) -> None:
                    tag, payload = value
                    out.kind = ffi.WASMTIME_COMPONENT_RESULT
                    out.of.result.is_ok = tag == "ok"
                    out.of.result.val = _boxed(ctx, payload, cases[tag])
                return lower_result

            def lower_variant(ctx: Any, value: tuple[str, Any], out: Any) -> None:
                tag, payload = value
                out.kind = ffi.WASMTIME_COMPONENT_VARIANT
                out.of.variant.discriminant = ffi.str_to_capi(tag)
                out.of.variant.val = _boxed(ctx, payload, cases[tag])
            return lower_variant
        if isinstance(t, component.TupleType):
            parts = [self.lower(e) for e in t.elements]

            def lower_tuple(ctx: Any, value: tuple[Any, ...], out: Any) -> None:
                raw = ffi.wasmtime_component_valtuple_t()
                ffi.wasmtime_component_valtuple_new_uninit(raw, len(parts))
                for i, p in enumerate(parts):
                    p(ctx, value[i], raw.data[i])
                out.kind = ffi.WASMTIME_COMPONENT_TUPLE
                out.of.tuple = raw
            return lower_tuple
        if isinstance(t, component.RecordType):
            fields = [(name, self.lower(f)) for name, f in t.fields]

            def lower_record(ctx: Any, value: dict[str, Any], out: Any) -> None:
                raw = ffi.wasmtime_component_valrecord_t()
                ffi.wasmtime_component_valrecord_new_uninit(raw, len(fields))
                for i, (name, p) in enumerate(fields):
                    raw.data[i].name = ffi.str_to_capi(name)
                    p(ctx, value[name], raw.data[i].val)
                out.kind = ffi.WASMTIME_COMPONENT_RECORD
                out.of.record = raw
            return lower_record
        return lambda _ctx, value, out: t.convert_to_c(None, value, ctypes.pointer(out))


def _cases(t: Any) -> list[tuple[str, Any]]:
    return t._cases()  # type: ignore[no-any-return]


def _lift_bytes(_ctx: Any, c: Any) -> bytes:
    size = c.of.list.size
    parts = []
    if size:
        buf = _scratch_buffer()
        base = ctypes.addressof(c.of.list.data.contents)
        window = (ctypes.c_char * len(buf)).from_buffer(buf)
        for done in range(0, size, SCRATCH_VALUES):  # 2 MiB of C values at a time, through the scratch
            n = min(SCRATCH_VALUES, size - done)
            ctypes.memmove(window, base + done * VAL_SIZE, n * VAL_SIZE)
            parts.append(bytes(buf[VAL_OF:n * VAL_SIZE:VAL_SIZE]))
        del window
    ffi.wasmtime_component_vallist_delete(ctypes.byref(c.of.list))
    return b"".join(parts)


def _lower_bytes(_ctx: Any, value: bytes, out: Any) -> None:
    raw = ffi.wasmtime_component_vallist_t()
    ffi.wasmtime_component_vallist_new_uninit(raw, len(value))
    if value:
        buf = _scratch_buffer()
        base = ctypes.addressof(raw.data.contents)
        window = (ctypes.c_char * len(buf)).from_buffer(buf)
        for done in range(0, len(value), SCRATCH_VALUES):
            part = value[done:done + SCRATCH_VALUES]
            buf[VAL_OF:len(part) * VAL_SIZE:VAL_SIZE] = part  # the kinds stay set: only the bytes change
            ctypes.memmove(base + done * VAL_SIZE, window, len(part) * VAL_SIZE)
        del window
    out.kind = ffi.WASMTIME_COMPONENT_LIST
    out.of.list = raw


def _lift_resource(ctx: Any, c: Any) -> int:
    host = ctypes.POINTER(ffi.wasmtime_component_resource_host_t)()
    err = ffi.wasmtime_component_resource_any_to_host(ctx, c.of.resource, ctypes.byref(host))
    ffi.wasmtime_component_resource_any_delete(c.of.resource)
    c.of.resource = None  # taken, as the binding's own conversion takes it: the caller frees nothing more
    if err:
        raise wasmtime.WasmtimeError._from_ptr(err)
    rep = ffi.wasmtime_component_resource_host_rep(host)
    ffi.wasmtime_component_resource_host_delete(host)
    return int(rep)


def _lift_boxed(ctx: Any, ptr: Any, lift: Lift | None) -> Any:
    if lift is None:
        if ptr:
            ffi.wasmtime_component_val_delete(ptr)
        return None
    value = lift(ctx, ptr.contents)
    ptr.contents.kind = ffi.WASMTIME_COMPONENT_BOOL  # its contents are moved out: free the box alone
    ffi.wasmtime_component_val_delete(ptr)
    return value


def _boxed(ctx: Any, value: Any, lower: Lower | None) -> Any:
    if lower is None:
        return None
    raw = ffi.wasmtime_component_val_t()
    lower(ctx, value, raw)
    return ffi.wasmtime_component_val_new(ctypes.byref(raw))


def _error(message: str) -> int:
    data = message.encode()
    err = ffi.wasmtime_error_new(ctypes.create_string_buffer(data))
    return ctypes.cast(err, ctypes.c_void_p).value or 0
