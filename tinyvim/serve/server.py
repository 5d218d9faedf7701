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
Its own session also shields it from the terminal's Ctrl-C, so a tinyvim that dies without
stopping it (SIGKILL, OOM killer, a crash) must not leave it running with PPID 1: on Linux the
kernel SIGKILLs it when tinyvim ends (PR_SET_PDEATHSIG, set in the child before exec).

It loads the repository's model folders by name (explicit model control): Triton would
otherwise take every folder in the repository for a model, hidden ones too (a staging folder
of an interrupted `export --fmt triton`, an editor's or notebook's leftovers) and fail on them.
"""
from __future__ import annotations

import atexit
import ctypes
import importlib.util
import ipaddress
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
from collections.abc import Callable

from tinyvim.contract import TRITON_PORTS, check_positive_float
from tinyvim.errors import TinyvimError
from tinyvim.interrupt import unwind_on_termination
from tinyvim.serve.repository import remove_stale_staging
from tinyvim.utils import check_output_path
import contextlib

#: the server wheel this project checked; --no-deps keeps its numpy<2 pin out of the environment
#: (only its tritonserver binary is used, not its Python package)
SERVER_WHEEL = "nvidia-pytriton==0.7.0"
INSTALL_HINT = (f"pip install 'tinyvim[serve]' && pip install --no-deps {SERVER_WHEEL} "
                "(or pass --tritonserver PATH of a Triton Inference Server install)")
LOOPBACK = "127.0.0.1"
#: longest --timeout for the server to come up (a typo guard; NaN or inf would wait forever)
MAX_START_TIMEOUT_S = 3600.0
#: the server's flags that choose which models load: given through --server-arg, ours stay off
_MODEL_CONTROL_FLAGS = ("--model-control-mode", "--load-model")
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


def resolve_host(host: str) -> tuple[str, int]:
    """(IP address, socket family) of `host`, IPv4 first; a one-line error when it names nothing."""
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM) if host else []
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise TinyvimError(f"--host {host}: cannot resolve it ({reason}): give an address of this machine, e.g. "
                           "127.0.0.1 (loopback), ::1 or 0.0.0.0 (every interface)") from None
    found = sorted((f for f in found if f[0] in (socket.AF_INET, socket.AF_INET6)),
                   key=lambda f: f[0] != socket.AF_INET)
    if not found:
        raise TinyvimError(f"--host {host!r} names no IPv4 or IPv6 address: give e.g. 127.0.0.1")
    family, _, _, _, sockaddr = found[0]
    return sockaddr[0], family


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    ip, family = resolve_host(host)
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def model_folders(repo: Path) -> list[str]:
    """The model folders of a repository: its subfolders, hidden ones (.name) left out."""
    return sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_start_timeout(timeout_s) -> float:
    return check_positive_float(timeout_s, "--timeout", MAX_START_TIMEOUT_S)


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
        self.extra_args = tuple(extra_args)
        # --server-arg=--model-control-mode=...: the user chooses what loads; else the visible folders
        self.explicit = not any(a.split("=")[0] in _MODEL_CONTROL_FLAGS for a in self.extra_args)
        self.model_names = model_folders(self.repo)
        if self.explicit and not self.model_names:
            raise TinyvimError(f"{self.repo} holds no model folder: write one with "
                               f"`tinyvim export --fmt triton -o {self.repo}`")
        self.host = host
        self.ip, self.family = resolve_host(host)
        self.requested_ports = {**TRITON_PORTS, **(ports or {})}
        seen: dict[int, str] = {}
        for name, port in self.requested_ports.items():
            if port and port in seen:
                raise TinyvimError(f"--{seen[port]}-port and --{name}-port are both {port}: each endpoint needs its "
                                   "own port (0: a free one)")
            seen[port] = name
        self.ports: dict[str, int] = {}
        self.install = install
        self.log_path = check_output_path(log_path, what="--log-file") if log_path else None
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
        """The address a client on this machine reaches the server at (loopback for a wildcard)."""
        if ipaddress.ip_address(self.ip.split("%")[0]).is_unspecified:
            return LOOPBACK if self.family == socket.AF_INET else "::1"
        return self.ip

    @property
    def exposed(self) -> bool:
        """Listening beyond loopback: reachable from other machines."""
        return not ipaddress.ip_address(self.ip.split("%")[0]).is_loopback

    def _url_host(self) -> str:
        return f"[{self.client_host}]" if self.family == socket.AF_INET6 else self.client_host

    @property
    def http_url(self) -> str:
        """host:port of the HTTP/REST endpoint (what tritonclient.http takes)."""
        return f"{self._url_host()}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{self._url_host()}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._url_host()}:{self.ports['metrics']}/metrics"

    def command(self, backends: Path) -> list[str]:
        p = self.ports
        # Triton's HTTP and metrics servers take IPv6 as 'ipv6:ADDR', its gRPC server as '[ADDR]'
        v6 = self.family == socket.AF_INET6
        http_address, grpc_address = (f"ipv6:{self.ip}", f"[{self.ip}]") if v6 else (self.ip, self.ip)
        models = ["--model-control-mode", "explicit", *(f"--load-model={m}" for m in self.model_names)]
        return [str(self.install.server), "--model-repository", str(self.repo.resolve()),
                "--backend-directory", str(backends),
                "--http-address", http_address, "--http-port", str(p["http"]),
                "--grpc-address", grpc_address, "--grpc-port", str(p["grpc"]),
                "--metrics-address", http_address, "--metrics-port", str(p["metrics"]),
                "--allow-gpu-metrics", "false", "--exit-timeout-secs", str(self.exit_timeout_s),
                *(models if self.explicit else []), *self.extra_args]

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout_s: float = 120.0) -> TritonServer:
        """Launch the server and wait until it and every model in the repository are ready;
        a one-line TinyvimError (with the models' load errors) when it does not come up."""
        if self.process is not None:
            raise RuntimeError("server already started")
        timeout_s = check_start_timeout(timeout_s)
        self.install = self.install or find_triton()
        self.ports = {k: v or free_port(self.client_host) for k, v in self.requested_ports.items()}
        busy = [f"{k} {v}" for k, v in self.ports.items() if not _port_free(self.client_host, self.family, v)]
        if busy:
            raise TinyvimError(f"port(s) {', '.join(busy)} on {self.client_host} already in use: stop what listens "
                               "there or choose other ports (--http-port/--grpc-port/--metrics-port)")
        remove_stale_staging(self.repo)     # of killed exports that staged inside (hidden; not loaded anyway)
        self._runtime = Path(tempfile.mkdtemp(prefix="tinyvim-tritonserver-"))
        try:
            backends = assemble_backends(self.install, self._runtime)
            log_path = self.log_path or self._runtime / "tritonserver.log"
            self._log_file = _open_log(log_path)
            self.process = subprocess.Popen(self.command(backends), env=server_environment(self.install),
                                            stdin=subprocess.DEVNULL, stdout=self._log_file,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=die_with_parent())
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
        """The repository index: [{'name', 'version', 'state', 'reason'}] of the models it loaded
        (every entry when --server-arg chose the model control). A one-line error (exit 1) when
        the server does not answer with the index."""
        url = f"http://{self.http_url}/v2/repository/index"
        request = urllib.request.Request(url, data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                index = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise TinyvimError(f"tritonserver answered POST {url} with HTTP {exc.code} {exc.reason}",
                               exit_code=1) from None
        except (urllib.error.URLError, OSError) as exc:
            raise TinyvimError(f"tritonserver did not answer POST {url}: {getattr(exc, 'reason', exc)}",
                               exit_code=1) from None
        except ValueError as exc:
            raise TinyvimError(f"tritonserver's answer to POST {url} is not JSON ({exc})", exit_code=1) from None
        if not isinstance(index, list) or not all(isinstance(m, dict) and "name" in m for m in index):
            raise TinyvimError(f"tritonserver's answer to POST {url} is not a model index: {str(index)[:200]}",
                               exit_code=1)
        return [m for m in index if not self.explicit or m["name"] in self.model_names]

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

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_until_stopped(server: TritonServer, timeout_s: float, *,
                        on_ready: Callable[[TritonServer], None] = lambda srv: None, poll_s: float = 0.5) -> int | None:
    """`tinyvim serve`: start `server`, call `on_ready(server)` once it and its models are
    ready, and keep it up until Ctrl-C, SIGTERM or SIGHUP; then stop it and its stubs (its
    runtime folder goes too). Returns its exit code; a TinyvimError (exit 1) when the server
    ends by itself."""
    timeout_s = check_start_timeout(timeout_s)
    with unwind_on_termination():
        try:
            server.start(timeout_s)
            on_ready(server)
            while server.alive():
                time.sleep(poll_s)
            raise TinyvimError(f"tritonserver (PID {server.pid}) exited by itself with code "
                               f"{server.process.returncode}" + (f": see {server.log_path}" if server.log_path else ""),
                               exit_code=1)
        except KeyboardInterrupt:    # Ctrl-C, or SIGTERM/SIGHUP through unwind_on_termination
            pass
        finally:
            code = server.stop()
    return code


#: linux/prctl.h
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn making the child receive SIGKILL when this process ends, however it ends
    (None where prctl is not available: not Linux). It also ends the child at once if this
    process died between fork and the prctl (the child was already re-parented)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)      # loaded here: the child only calls it
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(1)
    return preexec


def _open_log(path: Path):
    """The server's log file, opened for writing (its folder made); one-line errors."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "wb")
    except OSError as exc:
        raise TinyvimError(f"cannot write --log-file {path}: {exc.strerror or exc} (choose another path)") from None


def _port_free(host: str, family: int, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as s:
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
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
