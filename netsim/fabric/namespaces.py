"""Network namespaces and veth pairs through ``ip`` (iproute2), with cleanup that leaves nothing behind.

Processes started inside a namespace must be ended before it is deleted (:func:`delete_namespace`
kills what ``ip netns pids`` lists), or the namespace lingers.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import time

from netsim.fabric.errors import FabricError

logger = logging.getLogger(__name__)


def missing_capabilities() -> str | None:
    """Why namespaces cannot be used here (not root, no ``ip``/``tc``), or ``None`` when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (euid 0)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"'{tool}' not found on PATH (Debian package iproute2)"
    return None


def run(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, raising :class:`FabricError` with its stderr when ``check`` and it fails."""
    proc = subprocess.run(list(args), capture_output=True, text=True, input=input, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise FabricError(f"`{' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def ip_batch(commands: list[str], netns: str | None = None) -> None:
    """Run several ``ip`` commands in one process (``ip -b -``), optionally inside ``netns``."""
    if commands:
        run("ip", *(["-n", netns] if netns else []), "-b", "-", input="\n".join(commands) + "\n")


def list_namespaces() -> list[str]:
    """Names of all network namespaces (``ip netns list``)."""
    out = run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def create_namespace(name: str) -> None:
    """Create ``name`` with its loopback up."""
    run("ip", "netns", "add", name)
    run("ip", "-n", name, "link", "set", "lo", "up")


def exec_prefix(name: str | None) -> list[str]:
    """Command prefix that runs a program inside namespace ``name`` (empty for the root namespace)."""
    return ["ip", "netns", "exec", name] if name else []


def sysctl(name: str | None, key: str, value: str) -> None:
    """Set a sysctl inside a namespace (per-namespace keys such as ``net.ipv4.ip_forward``).

    Writes ``/proc/sys`` from a shell in the namespace (no dependency on procps' ``sysctl``).
    """
    path = "/proc/sys/" + key.replace(".", "/")
    run(*exec_prefix(name), "sh", "-c", f"echo {shlex.quote(value)} > {shlex.quote(path)}")


def kill_namespace_processes(name: str, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``, every process that lives in namespace ``name``."""
    deadline = time.monotonic() + timeout
    sig = signal.SIGTERM
    while True:
        pids = [int(p) for p in run("ip", "netns", "pids", name, check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                raise FabricError(f"processes {pids} in namespace {name} survive SIGKILL")
            sig, deadline = signal.SIGKILL, time.monotonic() + timeout
        time.sleep(0.05)


def delete_namespace(name: str) -> None:
    """End the namespace's processes, then delete it (its veth ends go with it)."""
    if name not in list_namespaces():
        return
    kill_namespace_processes(name)
    run("ip", "netns", "delete", name)


def delete_link(dev: str) -> None:
    """Delete a link in the root namespace if it exists (a veth's peer goes with it)."""
    if run("ip", "link", "show", dev, check=False).returncode == 0:
        run("ip", "link", "delete", dev, check=False)
