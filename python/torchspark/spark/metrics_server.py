"""One executor's ``/metrics`` server: a small process per Spark executor.

PySpark runs one Python worker process per running task and reuses it, so an
executor's engines live in several processes, which come and go. Each worker
writes its metrics to files in one directory per executor (prometheus_client's
multiprocess mode, :mod:`.metrics`); this process serves their sum.

:func:`ensure` (in a worker) starts it once per executor, under a file lock:
keyed by application and executor id, it serves on the first free port of the
range, writes its address to ``server.json`` in the directory (the workers
read it and report it to the driver) and logs it to stderr (the executor's
log). It watches the executor process and, when that goes, stops and removes
the directory. It never imports torch or the torchspark package: started by
path (:data:`_LAUNCH`), it loads only :mod:`.ports` beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

SERVER_FILE = "server.json"
_CHECK_S = 1.0  # how often the server looks at the executor and the workers
_START_S = 15.0  # how long a worker waits for a new server's address
# The server as a script run by path, so that its process does not import the
# torchspark package (and torch, a second or two and hundreds of MB).
_LAUNCH = "import runpy, sys; sys.argv.pop(0); runpy.run_path(sys.argv[0], run_name='__main__')"


def _sibling(name: str) -> Any:
    """A module beside this one, without importing the package when run by path."""
    if __package__:
        return importlib.import_module(f"{__package__}.{name}")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_torchspark_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_address(directory: str) -> dict[str, Any] | None:
    """The running server's ``server.json`` (pid, host, port, address), or None."""
    try:
        with open(os.path.join(directory, SERVER_FILE)) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if alive(int(info.get("pid", -1))) else None


def ensure(directory: str, ports: str, executor_pid: int, host: str) -> dict[str, Any]:
    """The address of ``directory``'s server, started now unless running.

    Under an exclusive lock on ``<directory>.lock``, so that of the workers
    starting together exactly one starts it. Raises OSError when it does not
    come up within a few seconds (its error is in the executor's stderr).
    """
    os.makedirs(directory, exist_ok=True)
    with open(directory + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = read_address(directory)
        if info is not None:
            return info
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(directory, SERVER_FILE))
        args = ["--dir", directory, "--ports", ports, "--executor-pid", str(executor_pid)]
        process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, os.path.abspath(__file__), *args, "--host", host],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # not in the worker's process group: outlives it
        )
        _children.append(process)
        deadline = time.monotonic() + _START_S
        while time.monotonic() < deadline:
            info = read_address(directory)
            if info is not None:
                return info
            if process.poll() is not None:
                raise OSError(
                    f"the executor's metrics server exited ({process.returncode}) before serving"
                    " (its error is in the executor's stderr)"
                )
            time.sleep(0.02)
        raise OSError(f"the executor's metrics server did not start in {_START_S:.0f} s")


_children: list[subprocess.Popen[bytes]] = []  # kept: never collected while running


def _mark_dead_workers(directory: str, mark_process_dead: Any) -> None:
    """Drop the gauges of worker processes that are gone (their counters stay:
    what a finished worker counted still counts)."""
    for name in os.listdir(directory):
        if name.startswith("gauge_live") and name.endswith(".db"):
            pid = name[: -len(".db")].rpartition("_")[2]
            if pid.isdigit() and not alive(int(pid)):
                mark_process_dead(int(pid), directory)


def serve(directory: str, ports: range, executor_pid: int, host: str, bind: str = "") -> None:
    """Serve ``directory``'s metrics until ``executor_pid`` exits, then remove it."""
    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    server = _sibling("ports").serve(make_wsgi_app(registry), bind, ports)
    port = server.server_port
    info = {"pid": os.getpid(), "host": host, "port": port, "address": f"{host}:{port}"}
    partial = os.path.join(directory, f".{SERVER_FILE}.{os.getpid()}")
    with open(partial, "w") as f:
        json.dump(info, f)
    os.replace(partial, os.path.join(directory, SERVER_FILE))
    print(
        f"torchspark: executor metrics at http://{info['address']}/metrics ({directory})",
        file=sys.stderr,
        flush=True,
    )
    try:
        while alive(executor_pid):
            time.sleep(_CHECK_S)
            with contextlib.suppress(OSError):
                _mark_dead_workers(directory, mark_process_dead)
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(directory, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.remove(directory + ".lock")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--ports", required=True)
    parser.add_argument("--executor-pid", type=int, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--bind", default="")
    args = parser.parse_args(argv)
    ports = _sibling("ports").parse_ports(args.ports)
    try:
        serve(args.dir, ports, args.executor_pid, args.host, args.bind)
    except OSError as e:
        print(f"torchspark: the executor's metrics server failed: {e}", file=sys.stderr)
        return 1 if e.errno != errno.EADDRINUSE else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
