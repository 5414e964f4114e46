"""Start and stop Azurite (from ``node_modules``) on free loopback ports.

Used by the test session and by ``python -m devhost run``. Azurite runs in memory
(``--inMemoryPersistence``), with ``--skipApiVersionCheck`` because azure-storage-queue
12.18 speaks an API version Azurite rejects otherwise, and ``--loose`` so unsupported
headers are ignored rather than failing requests.

The child is tied to this process: on Linux it gets SIGTERM when the parent dies
(``PR_SET_PDEATHSIG``), so a killed test run never leaves Azurite behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = ROOT / "node_modules" / ".bin" / "azurite"

# Azurite's documented development account. It is public (printed in Microsoft's docs) and only
# ever valid against a local emulator, so it is not a secret.
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def connection_string(blob: int, queue: int, table: int) -> str:
    """Build the storage connection string for an Azurite instance on the given ports."""
    base = "http://127.0.0.1"
    return (
        f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
        f"BlobEndpoint={base}:{blob}/{DEV_ACCOUNT};"
        f"QueueEndpoint={base}:{queue}/{DEV_ACCOUNT};"
        f"TableEndpoint={base}:{table}/{DEV_ACCOUNT};"
    )


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """``preexec_fn`` for children: SIGTERM when this process dies, own process group."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    os.setsid()


@dataclass
class Azurite:
    """A running Azurite process and how to reach it."""

    process: subprocess.Popen[bytes]
    log: IO[bytes]
    blob_port: int
    queue_port: int
    table_port: int

    @property
    def connection_string(self) -> str:
        return connection_string(self.blob_port, self.queue_port, self.table_port)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                # In memory there is nothing to flush: a short grace period, then SIGKILL.
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.close()


def start(*, ports: tuple[int, int, int] | None = None, timeout: float = 30.0) -> Azurite:
    """Start Azurite in memory and wait until all three services accept connections.

    Raises:
        RuntimeError: Azurite is not installed (run ``npm ci``) or did not come up in time.
    """
    if not AZURITE_BIN.exists():
        raise RuntimeError(f"Azurite is not installed at {AZURITE_BIN}: run `npm ci` in {ROOT}")
    blob, queue, table = ports or (free_port(), free_port(), free_port())
    args = [
        str(AZURITE_BIN),
        "--inMemoryPersistence",
        "--skipApiVersionCheck",
        "--loose",
        "--silent",
        "--disableProductStyleUrl",
        "--blobHost", "127.0.0.1", "--blobPort", str(blob),
        "--queueHost", "127.0.0.1", "--queuePort", str(queue),
        "--tableHost", "127.0.0.1", "--tablePort", str(table),
    ]  # fmt: skip
    # stderr goes to a temporary file, not a pipe: a pipe nobody drains can fill and stall Azurite.
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by Azurite.stop()
    process = subprocess.Popen(  # fixed executable from node_modules
        args,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log,
        preexec_fn=die_with_parent,  # ties the child's life to ours
    )
    azurite = Azurite(process, log, blob, queue, table)
    deadline = time.monotonic() + timeout
    pending = {blob, queue, table}
    while pending:
        if process.poll() is not None:
            log.seek(0)
            err = log.read().decode(errors="replace")
            log.close()
            raise RuntimeError(f"Azurite exited with {process.returncode}: {err.strip()[:2000]}")
        if time.monotonic() > deadline:
            azurite.stop()
            raise RuntimeError(f"Azurite did not listen on ports {sorted(pending)} within {timeout}s")
        for port in list(pending):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.2)
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    pending.discard(port)
        time.sleep(0.05)
    return azurite


@contextlib.contextmanager
def running(**kwargs: float) -> Iterator[Azurite]:
    """Context manager: Azurite for the duration of the block, stopped however the block ends."""
    azurite = start(**kwargs)  # type: ignore[arg-type]
    try:
        yield azurite
    finally:
        azurite.stop()
