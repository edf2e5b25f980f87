"""What travels to a pod (the bundle) and how its results come back into the run folder.

The bundle is one ``tar.gz``: ``ck/manifest.json`` (the stages, the resolved spec, what to install)
and ``files/<absolute local path>`` for the run folder and every local input the spec names (model
folder, data files, task files, local wheels). The pod's agent unpacks it below its root and points
the spec's paths there, so nothing in the user's spec has to change for a run to move to RunPod.
"""

from __future__ import annotations

import base64
import gzip
import importlib.resources
import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cruijff_kit import CkError, RunLayout, status
from cruijff_kit.files import atomic_write_json, load_yaml, locked, read_json
from cruijff_kit_runpod.agent import safe_extract

#: The command every pod runs: unpack the agent from its environment and start it. No inner quotes,
#: so it survives any shell-like splitting of the start command.
POD_COMMAND = ("bash -c 'mkdir -p $CK_POD_ROOT && echo $CK_POD_AGENT | base64 -d | gunzip > "
               "$CK_POD_ROOT/agent.py && exec python3 $CK_POD_ROOT/agent.py'")
_SYSTEM = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/sbin", "/sys", "/usr")
_SKIP_SECTIONS = ("run", "scheduler")


def agent_source() -> str:
    """The pod agent's source code."""
    return importlib.resources.files("cruijff_kit_runpod").joinpath("agent.py").read_text(encoding="utf-8")


def agent_env_value() -> str:
    """The agent, gzipped and base64-encoded, as the pod's ``CK_POD_AGENT`` variable."""
    return base64.b64encode(gzip.compress(agent_source().encode(), mtime=0)).decode()


# --------------------------------------------------------------------------- inputs
@dataclass
class Inputs:
    """Local paths a run needs on the pod, and spec strings to map onto them."""

    paths: list[Path] = field(default_factory=list)
    exact: dict[str, str] = field(default_factory=dict)

    def add(self, p: Path) -> None:
        if not any(p == q or q in p.parents for q in self.paths):
            self.paths = [q for q in self.paths if p not in q.parents] + [p]


def _candidate(value: str, spec_dir: Path) -> Path | None:
    if not value or "\n" in value or len(value) > 4096 or "://" in value:
        return None
    text = value
    if "@" in value and value.rsplit("@", 1)[0].endswith(".py"):
        text = value.rsplit("@", 1)[0]  # an eval task named as path/to/file.py@task
    p = Path(text).expanduser()
    if not p.is_absolute():
        p = spec_dir / p
    try:
        p = p.resolve()
        return p if p.exists() else None
    except (OSError, RuntimeError):
        return None


def find_inputs(spec: dict[str, Any], run_dir: Path, extra: list[str], install: list[str]) -> Inputs:
    """Every existing local file or folder the resolved spec names (plus ``extra`` and local installs).

    Folders that contain the run folder, the spec's folder or the home folder (a value like ``.``),
    paths inside the run folder (it is sent anyway) and system folders are left out.
    """
    meta = spec.get("run") or {}
    spec_dir = Path(meta.get("spec_dir") or run_dir)
    containers = [run_dir.resolve(), Path(meta.get("experiment_dir") or run_dir).resolve(), spec_dir.resolve(),
                  Path.home().resolve()]
    inputs = Inputs()

    def consider(value: str, required: bool = False) -> None:
        p = _candidate(value, spec_dir)
        if p is None:
            if required:
                raise CkError(f"`{value}` (listed in scheduler.upload) does not exist (relative paths are relative "
                              f"to {spec_dir}).")
            return
        if any(p == q or p in q.parents for q in containers) or run_dir.resolve() in p.parents:
            return
        if str(p) == "/" or any(str(p) == s or str(p).startswith(s + "/") for s in _SYSTEM):
            return
        inputs.add(p)
        if value.startswith("~"):
            inputs.exact[value] = str(p)

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)
        elif isinstance(obj, str):
            consider(obj)

    for key, section in spec.items():
        if key not in _SKIP_SECTIONS:
            walk(section)
    for value in extra:
        consider(value, required=True)
    for req in install:
        if req.startswith(("/", "./", "../", "~")) or Path(req).suffix == ".whl":
            consider(req)
    return inputs


def size_of(p: Path) -> int:
    """Bytes under a file or folder (links followed)."""
    if p.is_file():
        return p.stat().st_size
    total = 0
    for base, _dirs, names in os.walk(p, followlinks=True):
        for n in names:
            try:
                total += (Path(base) / n).stat().st_size
            except OSError:
                pass
    return total


# --------------------------------------------------------------------------- the bundle
def manifest_for(spec: dict[str, Any], run_dir: Path, stages: list[tuple[str, list[str]]], inputs: Inputs,
                 install: list[str], pip_args: list[str]) -> dict[str, Any]:
    """What the agent reads: stages in order with their in-pod dependencies, paths to remap, installs."""
    meta = spec.get("run") or {}
    prefixes = [str(run_dir), *(str(p) for p in inputs.paths)]
    for key in ("spec_dir", "experiment_dir"):
        if meta.get(key):
            prefixes.append(str(meta[key]))
    if meta.get("spec_file"):
        prefixes.append(str(meta["spec_file"]))
    return {"version": 1, "run_dir": str(run_dir), "stages": [{"name": n, "depends_on": d} for n, d in stages],
            "prefixes": sorted(set(prefixes)), "exact": inputs.exact, "spec": spec, "install": install,
            "pip_args": pip_args}


def write_bundle(dest: Path, run_dir: Path, manifest: dict[str, Any], inputs: Inputs) -> int:
    """Write the bundle to ``dest``; returns its size in bytes."""
    with tarfile.open(dest, "w:gz", compresslevel=1, dereference=True) as tar:
        raw = json.dumps(manifest, indent=1, default=str).encode()
        info = tarfile.TarInfo("ck/manifest.json")
        info.size = len(raw)
        info.mtime = int(os.path.getmtime(run_dir / "spec.yaml"))
        tar.addfile(info, io.BytesIO(raw))
        tar.add(str(run_dir), arcname="files" + str(run_dir), filter=_skip_locks)
        for p in inputs.paths:
            tar.add(str(p), arcname="files" + str(p), filter=_skip_locks)
    return dest.stat().st_size


def _skip_locks(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    name = info.name.rsplit("/", 1)[-1]
    if name.endswith(".lock") or name == "runpod.json":
        return None
    if info.issym() or info.islnk():
        return None  # links are followed (dereference=True); one left here points nowhere
    return info


# --------------------------------------------------------------------------- results back
MERGED_FIELDS = ("state", "started", "ended", "attempts", "error", "error_tail", "exit_code")


def merge_results(run_dir: Path, archive: Path, stages: list[str]) -> dict[str, dict[str, Any]]:
    """Unpack a pod's results into the run folder; returns the pod's status entries for ``stages``.

    Files are copied over the local ones; ``status.json``, ``eval/results.json`` and ``env.json`` are
    merged for this pod's stages only, so pods of other stages of the same run are never overwritten.
    """
    tmp = Path(tempfile.mkdtemp(prefix="ck-runpod-"))
    try:
        safe_extract(str(archive), str(tmp))
        pod_status = read_json(tmp / "status.json", default={}) or {}
        for path in sorted(tmp.rglob("*")):
            if not path.is_file():
                continue
            rel = path.relative_to(tmp)
            name = rel.as_posix()
            if name in ("status.json", "spec.yaml", "runpod.json"):
                continue
            target = run_dir / rel
            if name == "eval/results.json":
                _merge_results_json(target, path, stages)
            elif name == "env.json":
                _merge_env_json(target, path, stages)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
        return {s: e for s, e in (pod_status.get("stages") or {}).items() if s in stages}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _merge_results_json(target: Path, incoming: Path, stages: list[str]) -> None:
    theirs = read_json(incoming, default={}) or {}
    mine_pairs = {tuple(s.split(".", 2)[1:]) for s in stages if s.startswith("eval.")}
    with locked(target):
        data = read_json(target, default={}) or {}
        for task, targets in theirs.items():
            for tgt, metrics in (targets or {}).items():
                if (task, tgt) in mine_pairs:
                    data.setdefault(task, {})[tgt] = metrics
        atomic_write_json(target, data)


def _merge_env_json(target: Path, incoming: Path, stages: list[str]) -> None:
    theirs = read_json(incoming, default={}) or {}
    with locked(target):
        data = read_json(target, default={}) or {}
        for k, v in theirs.items():
            if k != "stages":
                data[k] = v
        for s, entry in (theirs.get("stages") or {}).items():
            if s in stages:
                data.setdefault("stages", {})[s] = entry
        atomic_write_json(target, data)


def apply_stage_entries(run_dir: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Write the pod's view of its stages into the local ``status.json`` (scheduler fields kept)."""
    for stage, entry in entries.items():
        fields = {k: entry.get(k) for k in MERGED_FIELDS if k in entry}
        if fields:
            status.update_stage(run_dir, stage, **fields)
    if any(e.get("state") == status.DONE for s, e in entries.items() if s == "train"):
        _drop_state_dir(run_dir)


def _drop_state_dir(run_dir: Path) -> None:
    """Trainer state left from an earlier local attempt is stale once the pod finished training."""
    spec = load_yaml((run_dir / "spec.yaml").read_text()) or {}
    if not (spec.get("train") or {}).get("keep_state"):
        shutil.rmtree(RunLayout(run_dir).state_dir, ignore_errors=True)
