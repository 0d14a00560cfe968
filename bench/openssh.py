"""The reference: OpenSSH's own ``sftp`` client in batch mode, against the same sshd."""

from __future__ import annotations

import re
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from servers import SftpEndpoint

from .child import machine_busy_seconds


@dataclass
class Measured:
    wall: float
    cpu: float  # user + system seconds of sftp and the ssh it runs
    cipher: str | None = None
    machine_cpu: float = 0.0  # busy seconds of every core meanwhile: sshd's share included


def _quote(path: str) -> str:
    # sftp's batch syntax: double quotes, with backslash escapes inside.
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def batch_put(endpoint: SftpEndpoint, pairs: list[tuple[Path, str]], batch_file: Path,
              timeout: float = 1800) -> Measured:
    """``sftp -b`` putting each local file to its remote path over one connection."""
    batch_file.write_text("".join(f"put {_quote(str(local))} {_quote(remote)}\n"
                                  for local, remote in pairs))
    args = [
        "sftp", "-q", "-v", "-b", str(batch_file),
        "-i", str(endpoint.key_path),
        "-P", str(endpoint.port),
        "-o", f"UserKnownHostsFile={endpoint.known_hosts_path}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-F", "/dev/null",
        f"{endpoint.username}@{endpoint.host}",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    machine0 = machine_busy_seconds()
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.perf_counter() - started
    machine_cpu = machine_busy_seconds() - machine0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        tail = "\n".join(line for line in result.stderr.splitlines()
                         if not line.startswith("debug"))[-2000:]
        raise RuntimeError(f"sftp -b failed with status {result.returncode}: {tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    match = re.search(r"kex: client->server cipher: (\S+)", result.stderr)
    return Measured(wall=wall, cpu=cpu, cipher=match.group(1) if match else None,
                    machine_cpu=machine_cpu)
