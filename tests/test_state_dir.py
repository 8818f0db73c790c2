"""The state dir is checked before anything loads (#31): one that cannot be written is exit code 2 and one line
naming it and the setting to change, not a 500 with a traceback on the first stored response."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import models_toml
from support.process import free_port, run_nomoat


def test_an_unwritable_state_dir_stops_the_start_with_the_setting_to_change(tmp_path: Path):
    # Below a regular file: no folder can be made there, whoever runs the test (root included).
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    (tmp_path / "models.toml").write_text(models_toml())
    env_state = blocker / "state"
    env = {**os.environ, "NOMOAT_STATE_DIR": str(env_state)}
    done = run_nomoat("serve", "--config", str(tmp_path / "models.toml"), "--port", str(free_port()), env=env,
                      cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if "cannot start" in line]
    assert len(lines) == 1, done.stderr
    assert f"the state dir {env_state} is not writable" in lines[0] and "NOMOAT_STATE_DIR" in lines[0], done.stderr
    assert "Traceback" not in done.stderr and "loading" not in done.stderr.lower(), done.stderr
