"""The node operator's commands: `wasmctr node install`, `uninstall` and `doctor`.

They put the containerd shim on a node and check it, from outside it: the shim binaries are found as the
installed entry points beside this interpreter's scripts, never by importing the shim package
(`wasmctr_node`), which wasmctr never imports (pyproject.toml's `library` contract).
"""
