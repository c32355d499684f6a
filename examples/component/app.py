"""A WASI preview 2 component written in Python: it exports `wasi:cli/run` like any command."""

import sys

from wit_world.exports import Run as RunInterface


class Run(RunInterface):
    def run(self) -> None:
        name = sys.argv[1] if len(sys.argv) > 1 else "world"
        print(f"Hello, {name}, from a Python component!")
