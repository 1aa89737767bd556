"""Building the native CPU library as users meet it: the first build says so on stderr, once, and
``python -m recurrent.build`` does it ahead of time; processes started together build it once; a failed
compile says why once and is not retried by every later process; an unwritable cache still works; and
nothing is ever loaded from a cache folder that another user could have written to."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, triton_forced

from recurrent import _cache
from recurrent.kernels.cpu import build

HAS_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None
BUILDING = "recurrent: building the native CPU kernels"


def run_build(cache: Path, **env) -> subprocess.Popen:
    """``python -m recurrent.build`` with ``cache`` as RECURRENT_CACHE_DIR, started (not waited for)."""
    environment = {**os.environ, "RECURRENT_CACHE_DIR": str(cache), **env}
    environment.pop("RECURRENT_NATIVE_CPU", None)
    return subprocess.Popen(
        [sys.executable, "-m", "recurrent.build"], cwd=ROOT, env=environment, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def finished(process: subprocess.Popen) -> tuple[str, str]:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return out, err


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler here")
@pytest.mark.skipif(triton_forced(), reason="the native CPU kernels' path")
def test_processes_started_together_build_once_per_cpu_kind_and_say_so(tmp_path):
    """Three processes started together on an empty cache (as DDP ranks or pytest -n start), and a fourth
    building for another CPU kind (-march=x86-64-v3) into the same cache, as a home directory shared by two
    kinds of node: one build per kind, one line on stderr each, every process loads its library; a later
    process finds it and says nothing."""
    if build.target() != "native":
        pytest.skip("RECURRENT_NATIVE_MARCH is set: this test builds for native and x86-64-v3 itself")
    same = [run_build(tmp_path) for _ in range(3)]
    other = run_build(tmp_path, RECURRENT_NATIVE_MARCH="x86-64-v3")
    results = [finished(p) for p in same + [other]]
    assert sum(err.count(BUILDING) for _, err in results[:3]) == 1, [err for _, err in results]
    assert results[3][1].count(BUILDING) == 1 and "-march=x86-64-v3" in results[3][1]
    for out, _ in results:
        assert "float32 CPU layers will run the native kernels" in out, out
    libraries = sorted(p.name for p in (tmp_path / "cpu-sequences").glob("*.so"))
    assert len(libraries) == 2, libraries
    out, err = finished(run_build(tmp_path))
    assert BUILDING not in err and "found in the cache" in out, (out, err)


@pytest.mark.skipif(shutil.which("false") is None, reason="no `false` program here")
def test_a_failed_compile_says_why_once_and_later_processes_do_not_retry(tmp_path):
    code = "import recurrent.kernels.cpu as c; print(c.available(), '|', c.status())"
    env = {**os.environ, "CXX": "false", "RECURRENT_CACHE_DIR": str(tmp_path)}
    env.pop("RECURRENT_NATIVE_CPU", None)
    outputs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
               for _ in range(2)]  # fmt: skip
    first, second = outputs
    assert first.stderr.count("native CPU kernels not used") == 1 and "false failed" in first.stderr, first.stderr
    assert first.stdout.startswith("False") and "false failed" in first.stdout
    assert second.stderr.count("recurrent:") == 0, second.stderr  # said once, not in every process
    assert second.stdout.startswith("False") and "an earlier build" in second.stdout, second.stdout
    retried = subprocess.run(
        [sys.executable, "-m", "recurrent.build"], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert retried.returncode == 0 and "false failed" in retried.stdout and "the ATen path" in retried.stdout
    assert BUILDING in retried.stderr  # tried again, as it says


def test_the_prebuild_command_exits_0_without_a_compiler(tmp_path):
    env = {**os.environ, "CXX": "no-such-compiler-here", "RECURRENT_CACHE_DIR": str(tmp_path)}
    env.pop("RECURRENT_NATIVE_CPU", None)
    done = subprocess.run(
        [sys.executable, "-m", "recurrent.build"], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "no C++ compiler" in done.stdout and "will run the ATen path" in done.stdout, done.stdout


def write(text: str):
    return lambda partial: partial.write_text(text)


def test_an_unwritable_cache_directory_falls_back_to_a_private_folder(tmp_path, monkeypatch):
    blocked = tmp_path / "a-file-not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("RECURRENT_CACHE_DIR", str(blocked))
    path = _cache.cached_file("test-kind", "thing.txt", write("made"))
    assert path.read_text() == "made" and not str(path).startswith(str(blocked))
    assert _cache.untrusted(path.parent) is None and (path.parent.stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize("how", ["mode 0777", "another owner"])
def test_nothing_is_loaded_from_a_folder_another_user_could_have_planted(how, tmp_path, monkeypatch):
    """A cache root (and its kind's folder) writable by others, or owned by another user, with a file of
    the expected name already in it: that file is never returned, for the native library or for a
    generated Triton kernel's source; a private folder serves instead."""
    planted = tmp_path / "shared"
    for folder in (planted, planted / "cpu-sequences", planted / "triton-cells"):
        folder.mkdir()
        if how == "mode 0777":
            folder.chmod(0o777)
        else:
            if not hasattr(os, "chown") or os.geteuid() != 0:
                pytest.skip("making a folder another user's needs root")
            os.chown(folder, 54321, 54321)
    planted_files = [planted / "cpu-sequences" / "sequences-x.so", planted / "triton-cells" / "cell_x.py"]
    for file in planted_files:
        file.write_text("planted")
    monkeypatch.setenv("RECURRENT_CACHE_DIR", str(planted))
    for file in planted_files:
        path = _cache.cached_file(file.parent.name, file.name, write("ours"))
        assert path != file and path.read_text() == "ours", path
        assert _cache.untrusted(path.parent) is None


def test_a_planted_generated_kernel_is_never_imported(tmp_path, monkeypatch):
    """The generated Triton modules are Python the library imports: a planted one in a folder others may
    write to must not run."""
    pytest.importorskip("triton")
    from recurrent.kernels.triton import generated

    source = "PLANTED_RAN = False\n"
    name = generated.module_name(source)
    planted = tmp_path / "shared" / "triton-cells"
    planted.mkdir(parents=True)
    for folder in (planted.parent, planted):
        folder.chmod(0o777)
    (planted / f"{name}.py").write_text("raise SystemExit('a planted module ran')\n")
    monkeypatch.setenv("RECURRENT_CACHE_DIR", str(tmp_path / "shared"))
    monkeypatch.delitem(sys.modules, name, raising=False)
    module = generated.load_source(source)
    assert module.PLANTED_RAN is False and not module.__file__.startswith(str(planted))


def test_a_file_in_a_trusted_folder_that_is_not_ours_alone_is_replaced(tmp_path, monkeypatch):
    folder = tmp_path / "cache" / "test-kind"
    folder.mkdir(parents=True, mode=0o700)
    (tmp_path / "cache").chmod(0o700)
    file = folder / "thing.txt"
    file.write_text("planted")
    file.chmod(0o666)
    monkeypatch.setenv("RECURRENT_CACHE_DIR", str(tmp_path / "cache"))
    path = _cache.cached_file("test-kind", "thing.txt", write("ours"))
    assert path == file and file.read_text() == "ours" and (file.stat().st_mode & 0o777) == 0o600
