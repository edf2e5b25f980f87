"""Fixtures for the slurm scheduler tests: a real single-node SLURM, and a throwaway plugin.

``slurm_cluster`` starts SLURM (slurmctld, slurmd, slurmdbd + MariaDB, munge) with
``tests/slurm/start.sh`` when tests marked ``slurm`` ask for it, and stops what it started at the
end of the session (the last pytest-xdist worker to finish stops it). Without root or apt the tests
are skipped; in CI (``CI=true``) that is a failure instead.

``slurm_plugin_site`` is a real third-party distribution (entry point group ``cruijff_kit``) built
with pip into a folder put on PYTHONPATH: a trainer, an evaluator and a dataset named ``slurmtest``
that stand in for the real backends (no torch, instant), and can fail, run out of memory like CUDA,
sleep, resume from their saved state, and check a real torch.distributed rendezvous.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
SLURM_DIR = ROOT / "tests" / "slurm"
STATE_DIR = Path(os.environ.get("CK_SLURM_STATE_DIR", "/run/ck-test-slurm"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

PLUGIN_PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "ck-slurm-testplugin"
version = "0.0.1"
requires-python = ">=3.11"
dependencies = []

[project.entry-points.cruijff_kit]
ckslurmtest = "ckslurmtest"

[tool.setuptools.packages.find]
where = ["src"]
"""

PLUGIN_INIT = '''
"""Test plugins for the slurm scheduler tests: trainer, evaluator and dataset `slurmtest`."""
from cruijff_kit import hookimpl


@hookimpl
def register_trainers(register):
    from ckslurmtest.plugins import FakeTrainer
    register(FakeTrainer)


@hookimpl
def register_evaluators(register):
    from ckslurmtest.plugins import FakeEvaluator
    register(FakeEvaluator)


@hookimpl
def register_datasets(register):
    from ckslurmtest.plugins import FakeDataset
    register(FakeDataset)
'''

PLUGIN_CODE = '''
"""Stand-ins for real backends: instant, no torch (except the distributed check)."""
from __future__ import annotations

import json
import os
import signal
import struct
import sys
import time
from typing import Any, Literal

from cruijff_kit._base.fileio import append_jsonl, atomic_write_json, read_json
from cruijff_kit._api.kinds import Dataset, DatasetConfig, EvalConfig, Evaluator, Trainer, TrainConfig


class OutOfMemoryError(RuntimeError):
    """What torch raises when CUDA runs out of memory (same name, same message)."""


class FakeTrainConfig(TrainConfig):
    mode: Literal["ok", "fail", "oom", "sleep"] = "ok"
    oom_above: int = 0          # mode oom: run out of memory while batch_size > oom_above
    steps: int = 3
    step_seconds: float = 0.0
    distributed: bool = False   # join a real torch.distributed (gloo) group and all-reduce
    fail_until: str | None = None  # fail while this file does not exist


def _safetensors(path) -> None:
    """A real, tiny safetensors file (one 2x2 float32 tensor)."""
    header = json.dumps({"base_model.model.lora_A.weight": {"dtype": "F32", "shape": [2, 2],
                                                            "data_offsets": [0, 16]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + struct.pack("<4f", 0.1, 0.2, 0.3, 0.4))


class FakeTrainer(Trainer):
    name = "slurmtest"
    Config = FakeTrainConfig
    description = "Test trainer for the slurm scheduler tests."

    def train(self, ctx) -> None:
        cfg = self.config
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        progress = ctx.state_dir / "progress.json"
        start = int((read_json(progress, default={}) or {}).get("step", 0))
        record: dict[str, Any] = {
            "rank": rank, "world_size": world, "local_rank": os.environ.get("LOCAL_RANK"),
            "batch_size": cfg.batch_size, "gradient_accumulation": cfg.gradient_accumulation,
            "resumed_from": start, "job": os.environ.get("SLURM_JOB_ID"),
            "restart": os.environ.get("SLURM_RESTART_COUNT"), "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE"),
            "has_hf_token": bool(os.environ.get("HF_TOKEN")), "time": time.time(),
        }
        if cfg.distributed:
            import torch
            import torch.distributed as dist

            dist.init_process_group("gloo")
            t = torch.tensor([float(rank + 1)])
            dist.all_reduce(t)
            record["all_reduce"] = float(t.item())
            dist.destroy_process_group()
        append_jsonl(ctx.layout.train_dir / "attempts.jsonl", record)
        if cfg.mode == "fail" or (cfg.fail_until and not os.path.exists(cfg.fail_until)):
            raise RuntimeError("deliberate failure of the slurmtest trainer")
        if cfg.mode == "oom" and cfg.batch_size > cfg.oom_above:
            print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr,
                  flush=True)
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        for step in range(start, cfg.steps):
            time.sleep(cfg.step_seconds)
            if rank == 0:  # a step's row and its saved state go together: a SIGTERM waits for both
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
                try:
                    ctx.log_metrics(step + 1, loss=1.0 / (step + 1))
                    atomic_write_json(progress, {"step": step + 1})
                finally:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        if rank != 0:
            return
        for epoch in cfg.saved_epochs():
            out = ctx.adapter_dir(epoch)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / "adapter_config.json", {
                "peft_type": "LORA", "r": cfg.lora.rank, "lora_alpha": cfg.lora.alpha,
                "target_modules": cfg.lora.targets, "base_model_name_or_path": ctx.model_path})
            _safetensors(out / "adapter_model.safetensors")


class FakeEvalConfig(EvalConfig):
    mode: Literal["ok", "fail"] = "ok"


class FakeEvaluator(Evaluator):
    name = "slurmtest"
    Config = FakeEvalConfig
    description = "Test evaluator for the slurm scheduler tests."

    def evaluate(self, ctx) -> dict[str, Any]:
        target = ctx.target
        if target.adapter is not None and not (target.adapter / "adapter_config.json").exists():
            raise RuntimeError(f"no adapter at {target.adapter}")
        if self.config.mode == "fail":
            raise RuntimeError("deliberate failure of the slurmtest evaluator (mode: fail)")
        ctx.eval_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(ctx.eval_dir / "result.json", {"target": target.name, "time": time.time()})
        return {"accuracy": 1.0}


class FakeDatasetConfig(DatasetConfig):
    marker: str | None = None   # a file each load() appends a line to (who prepared the data, when)


class FakeDataset(Dataset):
    name = "slurmtest"
    Config = FakeDatasetConfig
    description = "Test dataset for the slurm scheduler tests."

    def load(self, prompt: Any) -> Any:
        if self.config.marker:
            append_jsonl(self.path(self.config.marker), {"pid": os.getpid(), "job": os.environ.get("SLURM_JOB_ID"),
                                                          "time": time.time()})
        return {"train": [], "test": []}
'''


# --------------------------------------------------------------------------- shared resources
def _live_users(users: Path) -> list[Path]:
    alive = []
    for f in users.glob("*"):
        try:
            os.kill(int(f.name), 0)
            alive.append(f)
        except (ValueError, ProcessLookupError):
            f.unlink(missing_ok=True)
        except PermissionError:
            alive.append(f)
    return alive


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return res.returncode == 0 and any(s.strip().rstrip("*~#") in ("idle", "mixed", "allocated")
                                       for s in res.stdout.splitlines())


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"SLURM tests cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session", name="slurm_cluster")
def slurm_cluster_fixture(shared_dir: Path) -> Iterator[dict[str, Any]]:
    """A running single-node SLURM with accounting; started here when needed, stopped at the end."""
    lock = FileLock(str(shared_dir / "slurm.lock"), timeout=900)
    users = shared_dir / "slurm-users"
    users.mkdir(exist_ok=True)
    started_flag = shared_dir / "slurm-started-by-tests"
    with lock:
        if not _slurm_up():
            if os.geteuid() != 0:
                _unavailable("SLURM is not running and starting it needs root (tests/slurm/start.sh)")
            if shutil.which("apt-get") is None and shutil.which("slurmctld") is None and \
                    not Path("/usr/sbin/slurmctld").exists():
                _unavailable("SLURM is not installed and apt-get is not available")
            env = {**os.environ, "CK_SLURM_STATE_DIR": str(STATE_DIR)}
            res = subprocess.run(["bash", str(SLURM_DIR / "start.sh")], capture_output=True, text=True,
                                 timeout=900, env=env)
            if res.returncode != 0:
                _unavailable(f"tests/slurm/start.sh failed ({res.returncode}): {res.stderr[-2000:]}")
            started_flag.write_text("1")
        (users / str(os.getpid())).write_text("")
    info = {"partition": subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True)
            .stdout.split()[0].rstrip("*")}
    yield info
    with lock:
        (users / str(os.getpid())).unlink(missing_ok=True)
        if not _live_users(users) and started_flag.exists():
            subprocess.run(["bash", str(SLURM_DIR / "stop.sh")], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "CK_SLURM_STATE_DIR": str(STATE_DIR)})
            started_flag.unlink(missing_ok=True)


@pytest.fixture(scope="session", name="slurm_plugin_site")
def slurm_plugin_site_fixture(shared_dir: Path) -> Path:
    """The test plugin distribution, built with pip into its own folder (put on PYTHONPATH to use it)."""
    target = shared_dir / "slurm-plugin-site"
    with FileLock(str(target) + ".lock"):
        if not (target / ".done").exists():
            src = shared_dir / "slurm-plugin-src"
            shutil.rmtree(src, ignore_errors=True)
            (src / "src" / "ckslurmtest").mkdir(parents=True)
            (src / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
            (src / "src" / "ckslurmtest" / "__init__.py").write_text(PLUGIN_INIT)
            (src / "src" / "ckslurmtest" / "plugins.py").write_text(PLUGIN_CODE)
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                            "--target", str(target), str(src)], check=True, capture_output=True, text=True)
            (target / ".done").write_text("ok")
    return target


@pytest.fixture(name="slurm_env")
def slurm_env_fixture(slurm_plugin_site: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Environment for `ck` subprocesses: the test plugin on PYTHONPATH, a profile of our own."""
    from cruijff_kit._api import registry as plugins

    monkeypatch.syspath_prepend(str(slurm_plugin_site))
    path = os.pathsep.join(p for p in [str(slurm_plugin_site), os.environ.get("PYTHONPATH", "")] if p)
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CK_PROFILE", str(tmp_path / "no-profile.yaml"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    plugins.registry.cache_clear()
    yield {"PYTHONPATH": path}
    plugins.registry.cache_clear()


# --------------------------------------------------------------------------- specs and waiting
def slurm_spec(folder: Path, *, experiment: str = "slurm-test", train: dict[str, Any] | None = None,
               evals: dict[str, Any] | None = None, scheduler: dict[str, Any] | None = None,
               sweep: dict[str, list[Any]] | None = None, profile: dict[str, Any] | None = None,
               marker: bool = False) -> Path:
    """Write a spec using the slurmtest plugins and the slurm scheduler (fast settings for tests)."""
    import yaml

    (folder / "model").mkdir(exist_ok=True)
    spec: dict[str, Any] = {
        "experiment": experiment,
        "output_dir": "out",
        "model": {"path": "model"},
        "dataset": {"plugin": "slurmtest", **({"marker": "prepared.jsonl"} if marker else {})},
        "train": {"plugin": "slurmtest", "epochs": 1, **(train or {})},
        "eval": [{"plugin": "slurmtest", "task": "check", "include_base": False, **(evals or {})}],
        "scheduler": {"plugin": "slurm", "resources": {"cpus": 1, "memory": "500MB", "time": "00:10:00"},
                      "stagger_seconds": 0, "poll_seconds": 1, "cancel_wait_seconds": 20, **(scheduler or {})},
    }
    if sweep:
        spec["sweep"] = sweep
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    if profile is not None:
        (folder / "ck.profile.yaml").write_text(yaml.safe_dump({"slurm": profile}, sort_keys=False))
    return path


def read_status(exp_dir: Path) -> dict[str, dict[str, Any]]:
    """run name -> its stages' status entries."""
    import json

    out = {}
    for run in sorted((exp_dir / "runs").iterdir()):
        data = json.loads((run / "status.json").read_text())
        out[run.name] = data["stages"]
    return out


def poll(exp_dir: Path, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 150.0
         ) -> list[dict[str, Any]]:
    """Refresh the experiment's status (one squeue + one sacct call each time) until ``done(rows)``."""
    from cruijff_kit._base.layout import ExperimentLayout
    from cruijff_kit._engine.runner import experiment_status

    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = experiment_status(ExperimentLayout(exp_dir))
        if done(rows):
            return rows
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting after {timeout:.0f} s; last rows: {rows}")


@pytest.fixture(name="cancel_leftovers")
def cancel_leftovers_fixture() -> Iterator[Callable[[Path], None]]:
    """Register experiment folders; their SLURM jobs still queued at the end of the test are cancelled."""
    folders: list[Path] = []
    yield folders.append
    import json

    ids = []
    for exp in folders:
        for st in exp.glob("runs/*/status.json"):
            for entry in json.loads(st.read_text()).get("stages", {}).values():
                if entry.get("job_id"):  # a grouped stage's id is "<job>/<stage>"
                    ids.append(str(entry["job_id"]).split("/", 1)[0])
    if ids and shutil.which("scancel"):
        subprocess.run(["scancel", *dict.fromkeys(ids)], capture_output=True, check=False)


def settled(rows: list[dict[str, Any]]) -> bool:
    """No stage submitted or running any more."""
    return all(r.get("state") not in ("submitted", "running") for r in rows)


def sacct_rows(job_ids: list[str]) -> list[dict[str, str]]:
    """sacct's allocation lines for jobs (array tasks one per line)."""
    fields = ["JobID", "JobIDRaw", "State", "ExitCode", "Submit", "Start", "End", "Reason"]
    bases = sorted({j.split("_")[0] for j in job_ids})
    res = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(bases), "-o", ",".join(fields)],
                         capture_output=True, text=True, check=True)
    return [dict(zip(fields, line.split("|"), strict=True)) for line in res.stdout.splitlines() if line]
