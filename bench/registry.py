"""Benchmark push and pull of a 256 MiB image to a local `docker-registry`, against `skopeo copy` doing
the same in the same run (each tool gets its own fresh registry so neither finds the other's blobs).

Figures: wall time of `wasmctr push` / `wasmctr pull` and of the equivalent `skopeo copy`, their ratio,
and wasmctr's peak RSS. Aims: ratio <= 1.0 against skopeo, peak RSS < 100 MiB whatever the size.

    python bench/registry.py [--size-mib 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import compile_sources, data_module, random_block, timed  # noqa: E402
from services import RegistryProcess  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    compile_sources()
    wasmctr = str(Path(sys.executable).parent / "wasmctr")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        wasm = root / "big.wasm"
        data_module(wasm, args.size_mib << 20, random_block)
        store = root / "store"
        env = {**os.environ, "WASMCTR_HOME": str(store)}
        subprocess.run([wasmctr, "build", str(wasm), "-t", "bench:1", "--format", "artifact", "-q"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        rows: dict[str, list[float]] = {k: [] for k in ("push", "skopeo push", "pull", "skopeo pull")}
        peak = 0
        for n in range(args.repeat):
            ours = RegistryProcess(root / f"reg-ours-{n}").start()
            theirs = RegistryProcess(root / f"reg-sk-{n}").start()
            try:
                ref = f"{ours.host}/bench:1"
                subprocess.run([wasmctr, "tag", "bench:1", ref], env=env, check=True, stdout=subprocess.DEVNULL)
                wall, rss = timed([wasmctr, "push", "-q", ref], env, quiet=True)
                rows["push"].append(wall)
                peak = max(peak, rss)
                wall, _ = timed(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{store}:bench:1",
                                 f"docker://{theirs.host}/bench:1"], quiet=True)
                rows["skopeo push"].append(wall)
                fresh = {**env, "WASMCTR_HOME": str(root / f"fresh-{n}")}
                wall, rss = timed([wasmctr, "pull", "-q", ref], fresh, quiet=True)
                rows["pull"].append(wall)
                peak = max(peak, rss)
                wall, _ = timed(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{theirs.host}/bench:1",
                                 f"oci:{root / f'skopeo-{n}'}:bench"], quiet=True)
                rows["skopeo pull"].append(wall)
            finally:
                ours.stop()
                theirs.stop()
                for d in (root / f"reg-ours-{n}", root / f"reg-sk-{n}", root / f"fresh-{n}", root / f"skopeo-{n}"):
                    shutil.rmtree(d, ignore_errors=True)
        med = {k: statistics.median(v) for k, v in rows.items()}
        print(f"image: {args.size_mib} MiB (incompressible), {args.repeat} runs, medians")
        print(f"push: wasmctr {med['push']:6.2f} s   skopeo {med['skopeo push']:6.2f} s   ratio "
              f"{med['push'] / med['skopeo push']:.2f}x")
        print(f"pull: wasmctr {med['pull']:6.2f} s   skopeo {med['skopeo pull']:6.2f} s   ratio "
              f"{med['pull'] / med['skopeo pull']:.2f}x")
        print(f"wasmctr peak RSS: {peak / 1024:.1f} MiB   (aims: ratio <= 1.0, peak RSS < 100 MiB)")


if __name__ == "__main__":
    main()
