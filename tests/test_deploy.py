"""The shipped systemd unit and Dockerfile keep what nomoat writes where the service reads it (#31): state and
the Hugging Face cache in directories the service owns, so a pull through the server survives it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "nomoat.service"


def _directives(text: str) -> list[tuple[str, str]]:
    return [(k.strip(), v.strip()) for k, v in re.findall(r"^([A-Za-z]+)=(.*)$", text, re.MULTILINE)]


def test_the_unit_points_state_and_the_hub_cache_at_its_own_directories():
    found = _directives(UNIT.read_text())
    for directive in [("StateDirectory", "nomoat"), ("CacheDirectory", "nomoat"), ("DynamicUser", "yes"),
                      ("ProtectHome", "yes"), ("ProtectSystem", "strict"),
                      ("Environment", "NOMOAT_STATE_DIR=/var/lib/nomoat"),
                      ("Environment", "HF_HOME=/var/cache/nomoat/huggingface")]:
        assert directive in found, directive


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path):
    # As installed: ExecStart names a nomoat that exists (verify checks the binary), here this venv's.
    unit = tmp_path / "nomoat.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/nomoat", str(Path(sys.executable).parent / "nomoat")))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "nomoat.service" not in done.stderr, done.stderr


def test_the_image_keeps_state_and_models_in_volumes_owned_by_a_fixed_uid():
    text = (ROOT / "Dockerfile").read_text()
    runtime = text[text.rindex("FROM "):]  # the final stage: what runs
    assert 'VOLUME ["/data/state", "/data/huggingface"]' in runtime
    assert "NOMOAT_STATE_DIR=/data/state" in runtime and "HF_HOME=/data/huggingface" in runtime
    assert "useradd --system --uid 10001 --gid 10001" in runtime and "USER 10001:10001" in runtime
    assert "install -d -o 10001 -g 10001 -m 0750 /data /data/state /data/huggingface" in runtime
    # The folders exist, owned, before VOLUME: a new named volume is a copy of them.
    assert runtime.index("install -d -o 10001") < runtime.index("VOLUME")
