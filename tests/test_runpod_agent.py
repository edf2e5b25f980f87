"""The pod agent on its own: a restarted container must not run the stages again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fake_runpod import FakeRunPod


def test_restarted_container_only_terminates_its_pod(tmp_path: Path) -> None:
    import cruijff_kit_runpod

    fake = FakeRunPod().start()
    try:
        with fake.lock:
            pod = fake._deploy({"gpuTypeId": "NVIDIA A100 80GB PCIe", "gpuCount": 1, "name": "ck-x"})
        root = tmp_path / "ck"
        root.mkdir()
        (root / ".ck-finished").write_text("finished")  # left by the first run of the container
        env = {**os.environ, "CK_POD_ROOT": str(root), "RUNPOD_POD_ID": pod["id"], "RUNPOD_API_KEY": pod["key"],
               "RUNPOD_API_BASE_URL": fake.url, "CK_AFTER_TERMINATE_SECONDS": "0",
               "CK_BUNDLE_URL": "http://127.0.0.1:9/never-fetched"}
        agent = Path(cruijff_kit_runpod.__file__).with_name("agent.py")
        res = subprocess.run([sys.executable, str(agent)], env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "already finished its stages" in res.stdout and "downloading" not in res.stdout
        assert fake.pods[pod["id"]]["terminated_by"] == "pod" and fake.running() == []
        assert [r["caller"] for r in fake.requests] == [pod["id"]]
    finally:
        fake.stop()
