"""Start and stop `tritonserver` on a model repository, from this Python environment.

Where the server comes from: `--tritonserver PATH` (a full Triton install, e.g. the NGC
container's /opt/tritonserver/bin/tritonserver, with its backends beside it), else the
`nvidia-pytriton` wheel (a real tritonserver 2.51 with the Python backend only), else a
`tritonserver` on PATH.

What running the wheel's server takes (checked on this project's Debian 12 / Python 3.11 machines):
- the wheel's bundled libraries (nvidia_pytriton.libs) on LD_LIBRARY_PATH;
- a backend directory whose python/ folder holds the Python-backend stub built for the running
  Python (the wheel ships one per Python version in python_backend_stubs/<X.Y>/). We assemble
  that folder from symlinks in a private runtime directory instead of copying into the
  installed package;
- a stub whose embedded Python is *this* environment: it starts isolated (PYTHONPATH is
  ignored), finds its sys.prefix from the first `python3` on PATH and that file's pyvenv.cfg,
  and links the first libpython3.X on the library path. So the server gets this interpreter's
  bin folder first on PATH and its libpython folder on LD_LIBRARY_PATH, and the model code in
  the stub imports numpy/onnxruntime from this virtual environment.

The server runs in its own session (process group): stopping it sends SIGTERM to its PID,
waits for Triton's graceful exit, then SIGKILLs whatever of its group is left (the stubs).
"""
from __future__ import annotations

import atexit
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tinyvim.contract import TRITON_PORTS
from tinyvim.errors import TinyvimError

#: the server wheel this project checked; --no-deps keeps its numpy<2 pin out of the environment
#: (only its tritonserver binary is used, not its Python package)
SERVER_WHEEL = "nvidia-pytriton==0.7.0"
INSTALL_HINT = (f"pip install 'tinyvim[serve]' && pip install --no-deps {SERVER_WHEEL} "
                "(or pass --tritonserver PATH of a Triton Inference Server install)")
LOOPBACK = "127.0.0.1"
#: error-level lines a server logs on a machine without a GPU and still serves (CPU models)
_HARMLESS = ("CudaDriverHelper", "NVML", "DCGM", "CUDA driver")


@dataclass(frozen=True)
class TritonInstall:
    """Where a tritonserver and its backends are. `python_stubs`: the wheel's folder of per-Python
    stubs (None for a full install, whose python backend carries its own stub)."""
    server: Path
    backends: Path
    library_dirs: tuple[Path, ...]
    python_stubs: Path | None
    origin: str


def find_triton(server: str | os.PathLike | None = None) -> TritonInstall:
    """The tritonserver to run, or a one-line error saying how to install one."""
    if server is not None:
        path = Path(server)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise TinyvimError(f"--tritonserver {path} is not an executable file: give the tritonserver binary "
                               "(e.g. /opt/tritonserver/bin/tritonserver)")
        return _full_install(path.resolve(), str(path))
    spec = importlib.util.find_spec("pytriton")   # finds the package without importing it (or its deps)
    if spec is not None and spec.submodule_search_locations:
        package = Path(list(spec.submodule_search_locations)[0])
        binary = package / "tritonserver" / "bin" / "tritonserver"
        if binary.is_file():
            from importlib.metadata import version
            return TritonInstall(server=binary, backends=package / "tritonserver" / "backends",
                                 library_dirs=(package.parent / "nvidia_pytriton.libs",),
                                 python_stubs=package / "tritonserver" / "python_backend_stubs",
                                 origin=f"nvidia-pytriton {version('nvidia-pytriton')}")
    on_path = shutil.which("tritonserver")
    if on_path:
        return _full_install(Path(on_path).resolve(), on_path)
    raise TinyvimError(f"Triton Inference Server is not installed (no nvidia-pytriton, no tritonserver on PATH): "
                       f"{INSTALL_HINT}")


def _full_install(binary: Path, origin: str) -> TritonInstall:
    root = binary.parent.parent          # <root>/bin/tritonserver, <root>/backends, <root>/lib
    return TritonInstall(server=binary, backends=root / "backends", library_dirs=(root / "lib",),
                         python_stubs=None, origin=origin)


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def python_library_dir() -> Path | None:
    """The folder of this interpreter's libpython3.X.so, when it is a shared-library build."""
    libdir, name = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and name and (Path(libdir) / name).exists():
        return Path(libdir)
    return None


def assemble_backends(install: TritonInstall, into: Path) -> Path:
    """A backend directory for `install` under `into`: every backend of the install linked in,
    and for the wheel a python/ folder completed with the stub for the running Python."""
    backends = into / "backends"
    backends.mkdir()
    if not install.backends.is_dir():
        raise TinyvimError(f"{install.origin}: no backends folder at {install.backends}")
    for entry in install.backends.iterdir():
        if entry.name == "python" and install.python_stubs is not None:
            continue
        (backends / entry.name).symlink_to(entry)
    if install.python_stubs is not None:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = install.python_stubs / version / "triton_python_backend_stub"
        if not stub.is_file():
            have = sorted(p.name for p in install.python_stubs.iterdir()) if install.python_stubs.is_dir() else []
            raise TinyvimError(f"{install.origin} has no Python-backend stub for Python {version} (it has "
                               f"{', '.join(have) or 'none'}): run tinyvim with one of those Python versions")
        python = backends / "python"
        python.mkdir()
        for entry in (install.backends / "python").iterdir():
            (python / entry.name).symlink_to(entry)
        # a symlink keeps the stub's $ORIGIN-relative RPATH pointing into the wheel
        (python / stub.name).symlink_to(stub)
    return backends


def server_environment(install: TritonInstall, base: dict | None = None) -> dict:
    """The server's environment: the install's libraries and this Python's libpython on the
    library path, this Python's bin folder first on PATH (see the module docstring)."""
    env = dict(os.environ if base is None else base)
    libs = [str(p) for p in install.library_dirs if p.is_dir()]
    pylib = python_library_dir()
    if pylib is not None:
        libs.append(str(pylib))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent)] +
                                  [p for p in env.get("PATH", "").split(os.pathsep) if p])
    return env


def failure_reasons(log_text: str, limit: int = 3) -> list[str]:
    """The lines of a tritonserver log that say why it did not come up: the models the
    status table lists as UNAVAILABLE (else the E-level log lines), then `error:` lines."""
    models, errors, final = [], [], []
    for line in log_text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        status = next((c for c in cells if c.startswith("UNAVAILABLE")), None)
        if status and len(cells) >= 3 and cells[0]:
            models.append(f"model {cells[0]} version {cells[1]}: {status}")
        elif re.match(r"E\d{4} ", line) and not any(n in line for n in _HARMLESS):
            errors.append(line.split("] ", 1)[-1].strip().strip('"'))
        elif line.startswith("error:"):
            final.append(line[len("error:"):].strip())
    return list(dict.fromkeys((models or errors) + final))[:limit]


class TritonServer:
    """One tritonserver process serving `repo` on `host` (loopback by default).

    Ports: a mapping {'http', 'grpc', 'metrics'} -> port, 0 for "a free one"; default
    tritonserver's own 8000/8001/8002. Use as a context manager, or start() / stop()."""

    def __init__(self, repo: str | os.PathLike, *, host: str = LOOPBACK, ports: dict[str, int] | None = None,
                 install: TritonInstall | None = None, log_path: str | os.PathLike | None = None,
                 extra_args: tuple[str, ...] = (), exit_timeout_s: int = 10):
        self.repo = Path(repo)
        if not self.repo.is_dir():
            raise TinyvimError(f"{self.repo} is not a folder: give a model repository "
                               "(`tinyvim export --fmt triton -o REPO` writes one)")
        self.host = host
        self.requested_ports = {**TRITON_PORTS, **(ports or {})}
        self.ports: dict[str, int] = {}
        self.install = install
        self.log_path = Path(log_path) if log_path else None
        self.extra_args = tuple(extra_args)
        self.exit_timeout_s = exit_timeout_s
        self.process: subprocess.Popen | None = None
        self._runtime: Path | None = None
        self._log_file = None

    # ------------------------------------------------------------------ addresses
    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def client_host(self) -> str:
        return LOOPBACK if self.host in ("0.0.0.0", "") else self.host

    @property
    def http_url(self) -> str:
        """host:port of the HTTP/REST endpoint (what tritonclient.http takes)."""
        return f"{self.client_host}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{self.client_host}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.client_host}:{self.ports['metrics']}/metrics"

    def command(self, backends: Path) -> list[str]:
        p = self.ports
        return [str(self.install.server), "--model-repository", str(self.repo.resolve()),
                "--backend-directory", str(backends),
                "--http-address", self.host, "--http-port", str(p["http"]),
                "--grpc-address", self.host, "--grpc-port", str(p["grpc"]),
                "--metrics-address", self.host, "--metrics-port", str(p["metrics"]),
                "--allow-gpu-metrics", "false", "--exit-timeout-secs", str(self.exit_timeout_s),
                *self.extra_args]

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout_s: float = 120.0) -> "TritonServer":
        """Launch the server and wait until it and every model in the repository are ready;
        a one-line TinyvimError (with the models' load errors) when it does not come up."""
        if self.process is not None:
            raise RuntimeError("server already started")
        self.install = self.install or find_triton()
        self.ports = {k: v or free_port(self.client_host) for k, v in self.requested_ports.items()}
        busy = [f"{k} {v}" for k, v in self.ports.items() if not _port_free(self.client_host, v)]
        if busy:
            raise TinyvimError(f"port(s) {', '.join(busy)} on {self.client_host} already in use: stop what listens "
                               "there or choose other ports (--http-port/--grpc-port/--metrics-port)")
        self._runtime = Path(tempfile.mkdtemp(prefix="tinyvim-tritonserver-"))
        try:
            backends = assemble_backends(self.install, self._runtime)
            log_path = self.log_path or self._runtime / "tritonserver.log"
            self._log_file = open(log_path, "wb")
            self.process = subprocess.Popen(self.command(backends), env=server_environment(self.install),
                                            stdin=subprocess.DEVNULL, stdout=self._log_file,
                                            stderr=subprocess.STDOUT, start_new_session=True)
            atexit.register(self.stop)
            self._wait_ready(timeout_s, log_path)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float, log_path: Path) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                reasons = failure_reasons(log_path.read_text(errors="replace"))
                raise TinyvimError(f"tritonserver exited (code {code}) before it was ready: "
                                   f"{'; '.join(reasons) or 'see its log'}" + (f" (log: {self.log_path})"
                                                                                if self.log_path else ""))
            if self.is_ready():
                return
            if time.monotonic() > deadline:
                reasons = failure_reasons(log_path.read_text(errors="replace"))
                raise TinyvimError(f"tritonserver was not ready after {timeout_s:.0f} s"
                                   + (f": {'; '.join(reasons)}" if reasons else ""))
            time.sleep(0.2)

    def is_ready(self) -> bool:
        """GET /v2/health/ready: the server and all its models are ready."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def models(self) -> list[dict]:
        """The repository index: [{'name', 'version', 'state', 'reason'}]."""
        request = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.loads(r.read())

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM to the server's PID, wait for its graceful exit (SIGKILL after `timeout_s`),
        then SIGKILL what is left of its process group (Python stubs). Returns its exit code."""
        atexit.unregister(self.stop)
        code = None
        if self.process is not None:
            pid = self.process.pid
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)   # by PID; a no-op once it has been reaped
                try:
                    self.process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            code = self.process.returncode
            _kill_group_leftovers(pid)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None
        return code

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex((host, port)) != 0


def _kill_group_leftovers(pgid: int, grace_s: float = 2.0) -> None:
    """The server's process group outlives it while its stubs run (they exit on their own
    within a second of noticing the server gone); SIGKILL them if they do not."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
