"""Benchmark what checking signatures adds to `wasmctr run` on a warm node (image pulled and compiled).

The same signed image is run under two policies: `insecureAcceptAnything` (nothing to check) and a
`sigstoreSigned` requirement for its key (the store's signature is read, the key loaded, the ECDSA signature
and the payload checked at every run). Each figure is the median wall time of `wasmctr run`, the two run in
turn, and the ratio to the run that checks nothing.

    python bench/signing.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[0] = str(HERE.parent / "tests")  # in place of bench/, whose http.py would shadow the standard library

from conftest import HELLO_WAT  # noqa: E402
from services import registry  # noqa: E402


def medians(argvs: dict[str, list[str]], env: dict[str, str], repeat: int) -> dict[str, float]:
    """The median wall time of each command, run in turn (so that a noisy moment of the machine falls on
    all of them alike)."""
    times: dict[str, list[float]] = {name: [] for name in argvs}
    for _ in range(repeat):
        for name, argv in argvs.items():
            start = time.perf_counter()
            subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    import wasmtime

    exe = str(Path(sys.executable).parent / "wasmctr")
    with tempfile.TemporaryDirectory() as scratch, registry(Path(scratch) / "registry") as reg:
        work = Path(scratch)
        (work / "hello.wasm").write_bytes(wasmtime.wat2wasm(HELLO_WAT))
        env = {**os.environ, "WASMCTR_HOME": str(work / "store"), "COSIGN_PASSWORD": "bench"}
        ref = f"{reg.host}/signed:1"
        wasmctr = lambda *a: subprocess.run([exe, *a], env=env, check=True, capture_output=True)  # noqa: E731
        wasmctr("key", "generate", "--output-key-prefix", str(work / "cosign"))
        wasmctr("build", str(work / "hello.wasm"), "-t", ref, "--push", "--precompile", "--sign",
                str(work / "cosign.key"))
        accept = work / "accept.json"
        accept.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        signed = work / "signed.json"
        signed.write_text(json.dumps({"default": [{"type": "reject"}], "transports": {"docker": {reg.host: [
            {"type": "sigstoreSigned", "keyPath": str(work / "cosign.pub")}]}}}))
        runs = {"insecureAcceptAnything": [exe, "run", "--signature-policy", str(accept), ref],
                "sigstoreSigned (verified)": [exe, "run", "--signature-policy", str(signed), ref]}
        medians(runs, env, 2)  # warm: compiled code cached, files in the page cache
        found = medians(runs, env, args.repeat)
        base = found["insecureAcceptAnything"]
        print(f"wasmctr run of a signed hello image, median of {args.repeat}")
        for name, seconds in found.items():
            print(f"  {name:28} {seconds * 1000:7.1f} ms  {seconds / base:5.2f}x")


if __name__ == "__main__":
    main()
