"""Per-workload engine settings: the wasm features and the optimisation level a guest is compiled with.

A workload names them in an image label (`io.wasmctr.wasm-features`, `io.wasmctr.opt-level`), a pod
annotation (`wasmctr.io/wasm-features`, `wasmctr.io/opt-level`) or a `wasmctr run` flag
(`--wasm-features`, `--opt-level`); `launch.py` and `ocispec.py` read those and `overlay` them here,
the higher source over the lower one, feature by feature. Features are wasmtime's, by the names its CLI
gives them (`-W simd`, `tail-call`): `simd,-threads` turns SIMD on and threads off, and a feature not
named keeps wasmtime's default. The optimisation level is wasmtime's `cranelift_opt_level`.

Everything is checked here, before anything compiles: an unknown name or level is a one-line error, and
so is a combination this wasmtime refuses. That last check cannot be left to wasmtime: its C API does
not return the error of a refused `Config`, it aborts the process (a Rust panic in
`wasm_engine_new_with_config`), which in the shim would end every container of the pod. The rules are
this wasmtime's (50): `reference-types` cannot be turned off (the component model's async support, on
and with no switch in wasmtime-py, needs it), and `relaxed-simd` needs `simd` (turning SIMD off turns
relaxed SIMD off unless it is named on, which is refused). tests/test_engine_settings.py makes, in a
child process, an engine of each feature turned on and off (alone, and with SIMD off) at each level that
this module accepts, so a wasmtime with new rules fails there rather than in a pod.

Imports the record helper and the errors only: the runtime CLI and the shim read a container's
settings without importing wasmtime; the executor makes the engine (`configure`).
"""

from __future__ import annotations

from typing import Any

from wasmctr.errors import UsageError
from wasmctr.record import record

# wasmtime's names (its CLI's `-W NAME`) of the features wasmtime-py's Config can switch
FEATURES = ("bulk-memory", "custom-page-sizes", "exceptions", "function-references", "gc", "memory64",
            "multi-memory", "multi-value", "reference-types", "relaxed-simd", "simd", "stack-switching",
            "tail-call", "threads", "wide-arithmetic")
OPT_LEVELS = ("none", "speed", "speed_and_size")
DEFAULT_OPT_LEVEL = "speed"  # wasmtime's


@record(frozen=True)
class EngineSettings:
    """The settings that change the code wasmtime generates for a guest, beyond fuel (which `RunSpec.fuel`
    turns on): the features chosen (sorted `(name, on)` pairs; others as wasmtime's defaults) and the
    optimisation level. Hashable: the executor keeps one engine per distinct record."""

    features: tuple[tuple[str, bool], ...] = ()
    opt_level: str = DEFAULT_OPT_LEVEL

    def overlay(self, features: str | None, opt_level: str | None, what: dict[str, str]) -> EngineSettings:
        """These settings with a higher-precedence source's on top: each feature it names replaces ours,
        its level ours. `what` names the source's two settings in errors (`{"features": "--wasm-features",
        ...}`, or a marked `parameter`). Raises UsageError for an unknown name or level, or a combination
        this wasmtime refuses."""
        chosen = dict(self.features)
        if features is not None:
            chosen.update(_features(features, what["features"]))
        level = self.opt_level
        if opt_level is not None:
            level = opt_level.strip().replace("-", "_")
            if level not in OPT_LEVELS:
                raise UsageError(f"{what['opt_level']} {opt_level!r}: expected one of {', '.join(OPT_LEVELS)}")
        settings = EngineSettings(tuple(sorted(chosen.items())), level)
        settings._check()
        return settings

    def effective(self) -> dict[str, bool]:
        """The features as the engine is configured: those chosen, and relaxed SIMD off with SIMD."""
        chosen = dict(self.features)
        if chosen.get("simd") is False:
            chosen.setdefault("relaxed-simd", False)
        return chosen

    def _check(self) -> None:
        chosen = self.effective()
        if chosen.get("reference-types") is False:
            raise UsageError("wasm feature -reference-types: this wasmtime cannot turn reference types off (its "
                             "component model support needs them)")
        if chosen.get("simd") is False and chosen.get("relaxed-simd"):
            raise UsageError("wasm features -simd with relaxed-simd: relaxed SIMD builds on SIMD; drop one")

    def describe(self) -> str:
        """The settings as a message names them (`wasm-features=-simd opt-level=none`); "" for the defaults."""
        parts = []
        if self.features:
            parts.append("wasm-features=" + ",".join(name if on else f"-{name}" for name, on in self.features))
        if self.opt_level != DEFAULT_OPT_LEVEL:
            parts.append(f"opt-level={self.opt_level}")
        return " ".join(parts)

    def cache_text(self, fuel: bool) -> str:
        """Everything that changes generated code, for the compile cache's key (with wasmtime's version and
        the machine, `compile_cache.key`): the epoch checks every engine has, fuel, the level, the features."""
        features = ",".join(f"{name}={int(on)}" for name, on in sorted(self.effective().items()))
        return f"epoch=1,fuel={int(fuel)},opt={self.opt_level},features={features}"

    def configure(self, config: Any, fuel: bool) -> Any:
        """A `wasmtime.Config` set as these settings say, with epoch interruption and fuel as asked."""
        config.epoch_interruption = True
        config.consume_fuel = fuel
        if self.opt_level != DEFAULT_OPT_LEVEL:
            config.cranelift_opt_level = self.opt_level
        for name, on in self.effective().items():
            setattr(config, "wasm_" + name.replace("-", "_"), on)
        return config


DEFAULT = EngineSettings()


def _features(text: str, what: str) -> dict[str, bool]:
    """`simd,-threads,+gc` as {"simd": True, "threads": False, "gc": True}; a name twice is refused."""
    chosen: dict[str, bool] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        on = not item.startswith("-")
        name = item.lstrip("+-").replace("_", "-")
        if name not in FEATURES:
            raise UsageError(f"{what} {text!r}: unknown wasm feature {name!r} (wasmtime's are "
                             f"{', '.join(FEATURES)}; -NAME turns one off)")
        if name in chosen:
            raise UsageError(f"{what} {text!r}: {name} is named twice")
        chosen[name] = on
    return chosen
