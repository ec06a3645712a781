"""The static-file scenario's file (`static10m`), made fresh for every run and never kept:
10 MiB of random bytes (`os.urandom`) in a new temporary directory that lives as long as
the run. Every server serves that directory (`--root DIR`); the load generator reads the
same file (`--expect-file`) and checks every body byte against it.

The file is written once, before the first run, so it is in the page cache for every
server alike (`sendfile` and `pread` both read it from there).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

# The placeholder a server's command line holds for the directory (`Server.apps`),
# replaced when the server starts (`StaticFiles.substitute`), as for the TLS files.
ROOT_ARG = "{static-root}"
FILE_NAME = "static10m.bin"
FILE_SIZE = 10 * 1024 * 1024


@dataclass(frozen=True)
class StaticFiles:
    directory: Path
    file: Path

    @property
    def url_path(self) -> str:
        return "/" + self.file.name

    @property
    def size(self) -> int:
        return self.file.stat().st_size

    def substitute(self, argv: tuple[str, ...]) -> tuple[str, ...]:
        """`argv` with the directory placeholder replaced by the directory."""
        return tuple(str(self.directory) if arg == ROOT_ARG else arg for arg in argv)

    def loadgen_args(self) -> list[str]:
        """What the load generator fetches, and what every body must be."""
        return ["--path", self.url_path, "--expect-file", str(self.file)]


def make_files() -> tuple[StaticFiles, tempfile.TemporaryDirectory]:
    """A fresh file in a new temporary directory; the caller keeps the directory object
    alive for the run (its cleanup deletes the file)."""
    holder = tempfile.TemporaryDirectory(prefix="hamanet-bench-static-")
    directory = Path(holder.name)
    file = directory / FILE_NAME
    file.write_bytes(os.urandom(FILE_SIZE))
    return StaticFiles(directory, file), holder
