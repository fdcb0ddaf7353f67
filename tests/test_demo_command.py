"""The main job, as a user runs it: ``manage.py demo --headless --json`` on embedded defaults
(a SQLite file and an embedded Redis in a fresh state folder, no external service)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flportal.processes import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_the_demo_runs_every_round_on_embedded_defaults_and_the_model_improves(tmp_path: Path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "MEDIA_ROOT", "CELERY_BROKER_URL"}
    }
    env.update(DEBUG="1", FLPORTAL_VAR_DIR=str(tmp_path / "var"))
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "demo",
            "--headless",
            "--json",
            "--merchants",
            "3",
            "--rounds",
            "3",
            "--port",
            "0",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert [r["version"] for r in rows] == [2, 3, 4]
    assert all(r["participants"] == 3 for r in rows)
    assert rows[-1]["metrics"]["accuracy"] > 0.70  # majority class on the holdout is 0.643
    assert rows[-1]["metrics"]["loss"] < rows[0]["metrics"]["loss"]
    assert "dashboard: http://127.0.0.1:" in result.stderr
    assert (tmp_path / "var" / "flportal.sqlite3").exists()
