"""The unit file's MemoryDenyWriteExecute=yes holds: nomoat loads and generates with W+X memory refused.

systemd enforces it with a seccomp filter (src/shared/seccomp-util.c; newer versions use the
kernel's PR_SET_MDWE when available). Both are applied here to a real `nomoat serve` child.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import free_port, models_toml
from streams import wait_for

PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
SCMP_ACT_ALLOW, SCMP_CMP_MASKED_EQ = 0x7FFF0000, 7


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def _seccomp_mdwe() -> None:
    """systemd's filter: no mmap with WRITE|EXEC, no mprotect/pkey_mprotect adding EXEC, no shmat SHM_EXEC."""
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    deny = 0x00050000 | errno.EPERM  # SCMP_ACT_ERRNO(EPERM)
    for name, mask in (("mmap", PROT_EXEC | PROT_WRITE), ("mprotect", PROT_EXEC),
                       ("pkey_mprotect", PROT_EXEC), ("shmat", SHM_EXEC)):
        cmp = _ArgCmp(2, SCMP_CMP_MASKED_EQ, mask, mask)
        if lib.seccomp_rule_add_array(ctx, deny, lib.seccomp_syscall_resolve_name(name.encode()), 1, ctypes.byref(cmp)):
            raise OSError(f"seccomp rule for {name}")
    if lib.seccomp_load(ctx):
        raise OSError("seccomp_load")


def _kernel_mdwe() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


def _available(deny: Callable[[], None]) -> bool:
    probe = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=deny, capture_output=True)
    return probe.returncode == 0


WX_MMAP = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"


def _usable(deny: Callable[[], None]) -> bool:
    try:
        return _available(deny)
    except OSError:  # libseccomp missing
        return False


def test_server_generates_with_write_execute_memory_denied(tmp_path: Path):
    """Both of systemd's mechanisms at once on one server (each alone would pass where both pass)."""
    denials = [deny for deny in (_seccomp_mdwe, _kernel_mdwe) if _usable(deny)]
    if not denials:
        pytest.skip("this kernel or libseccomp cannot apply the restriction")

    def deny() -> None:
        for one in denials:
            one()

    # Each restriction is real: a W+X mapping fails in a child that carries it.
    for one in denials:
        assert subprocess.run([sys.executable, "-c", WX_MMAP], preexec_fn=one, capture_output=True).returncode != 0
    assert subprocess.run([sys.executable, "-c", WX_MMAP], capture_output=True).returncode == 0

    port = free_port()
    (tmp_path / "models.toml").write_text(models_toml())
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nomoat", "serve", "--config", str(tmp_path / "models.toml"), "--port", str(port)],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, preexec_fn=deny, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                return httpx.get(base + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=60, what="server under the restriction")
        # A multi-token prompt and a few decode steps: the paths that would JIT or map W+X.
        r = httpx.post(base + "/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": "Name three colours of the rainbow."}], "max_tokens": 8})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (tmp_path / "server.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
