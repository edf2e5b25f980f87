"""`ck run/status/cancel` on the runpod scheduler, end to end, against a fake RunPod and a fake bucket
on 127.0.0.1. Each fake pod runs its real start command here: the agent downloads the bundle, runs
`ck stage` for each stage (toy plugins), sends the run folder back and terminates its own pod."""

from __future__ import annotations

import gzip
import json
import time

import pytest
import yaml
from runpod_fixtures import (
    BUCKET,
    run_ck,
    run_dirs,
    running_fake_runpod,
    running_fake_store,
    stages,
    write_profile,
    write_toy_spec,
)

fake_runpod = pytest.fixture(running_fake_runpod, name="fake_runpod")
fake_store = pytest.fixture(running_fake_store, name="fake_store")

GPU = "NVIDIA A100 80GB PCIe"
SECRET = "hf_secret_value_0123456789"


def test_run_on_a_pod_brings_the_run_folder_back(fake_runpod, fake_store, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    spec = write_toy_spec(tmp_path, scheduler="wait: true\n")
    write_profile(tmp_path, fake_store, env={"NOTE": 'a "quoted"\nline'})
    code, out = run_ck(capsys, "run", str(spec))
    assert code == 0, out
    assert "WANDB_API_KEY is not set here" in out

    # the pod: GPU, image, command and environment from the profile and spec
    from cruijff_kit_runpod.bundle import POD_COMMAND

    (deploy,) = fake_runpod.calls("podFindAndDeployOnDemand")
    inp = deploy["args"]["input"]
    assert (inp["gpuTypeId"], inp["gpuCount"], inp["cloudType"], inp["imageName"]) == (GPU, 1, "SECURE",
                                                                                     "example/ck-image:1")
    assert inp["dockerArgs"] == POD_COMMAND and inp["containerDiskInGb"] == 50
    env = {e["key"]: e["value"] for e in inp["env"]}
    assert env["HF_TOKEN"] == SECRET and "WANDB_API_KEY" not in env
    assert env["NOTE"] == 'a "quoted"\nline'
    pod_id = next(iter(fake_runpod.pods))
    pod = fake_runpod.pods[pod_id]
    assert fake_runpod.calls("pod"), "the pod's status was polled"
    assert pod["terminated_by"] == "pod" and fake_runpod.running() == []
    terminate = fake_runpod.calls("podTerminate")[0]
    assert terminate["caller"] == pod_id  # the pod used its own pod-scoped key

    # the pod ran `ck stage` for the train, then one for both evaluations (group_evals)
    log = (tmp_path / "containers" / pod_id / "container.log").read_text()
    order = [log.index(f" {s}\n") for s in ("train", "eval.toy.base eval.toy.epoch_0")]
    assert order == sorted(order), log

    # the run folder came back: adapters, metrics, eval results, logs, status
    (run,) = run_dirs(tmp_path)
    st = stages(run)
    assert {s: e["state"] for s, e in st.items()} == dict.fromkeys(("train", "eval.toy.base", "eval.toy.epoch_0"),
                                                                   "done")
    assert all(e["pod_id"] == pod_id and e["job_id"] == f"{pod_id}/{s}" and not e.get("live")
               for s, e in st.items())
    adapter = json.loads((run / "train/epoch_0/adapter/adapter_config.json").read_text())
    # the local model folder was sent along and the pod's spec pointed at its copy there
    assert adapter["base_model_name_or_path"].startswith(str(tmp_path / "containers" / pod_id))
    assert adapter["base_model_name_or_path"].endswith(str(tmp_path / "models" / "base"))
    assert (run / "train/metrics.jsonl").read_text()
    results = json.loads((run / "eval/results.json").read_text())
    assert results["toy"]["base"]["accuracy"]["value"] == 0.5
    assert results["toy"]["epoch_0"]["accuracy"]["value"] == 1.0
    assert (run / "logs/train.err").exists() and (run / "eval/toy/epoch_0/log.json").exists()
    assert yaml.safe_load((run / "spec.yaml").read_text())["run"]["spec_dir"] == str(tmp_path)  # local paths kept

    # secrets: never in the run folder, nor in what went to the bucket
    for f in (tmp_path / "runs").rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_text(errors="ignore"), f
    for (_bucket, key), body in fake_store.objects.items():
        raw = gzip.decompress(body) if key.endswith(".gz") else body
        assert SECRET.encode() not in raw, key
    assert {k.rsplit("/", 1)[1] for k in fake_store.keys(BUCKET)} == {"bundle.tar.gz", "results.tar.gz",
                                                                       "status.json", "done.json"}
    assert all(how == "presigned" for method, key, how in fake_store.log if method == "PUT"
               and not key.endswith("bundle.tar.gz"))

    code, out = run_ck(capsys, "status", str(spec))
    assert code == 0 and "Still running" not in out
    code, out = run_ck(capsys, "run", str(spec))  # nothing left to do: no new pod
    assert code == 0 and "0 stage(s) submitted, 3 already done" in out
    assert len(fake_runpod.calls("podFindAndDeployOnDemand")) == 1


RUNPODCTL = """#!{python}
import json, os, sys, urllib.request
with open({log!r}, "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\\n")
query = "mutation {{ podTerminate(input: {{ podId: " + json.dumps(sys.argv[3]) + " }}) }}"
req = urllib.request.Request(os.environ["RUNPOD_API_BASE_URL"] + "/graphql", json.dumps({{"query": query}}).encode(),
                             {{"Authorization": "Bearer " + os.environ["RUNPOD_API_KEY"]}})
urllib.request.urlopen(req).read()
"""


def test_failed_stage_skips_its_dependents_and_the_pod_ends(fake_runpod, fake_store, tmp_path, capsys):
    import sys

    tools = tmp_path / "bin"  # RunPod images ship `runpodctl`; the pod removes itself with it
    tools.mkdir()
    (tools / "runpodctl").write_text(RUNPODCTL.format(python=sys.executable, log=str(tmp_path / "runpodctl.log")))
    (tools / "runpodctl").chmod(0o755)
    fake_runpod.base_env["PATH"] = f"{tools}:{fake_runpod.base_env['PATH']}"
    spec = write_toy_spec(tmp_path, scheduler="wait: true\n", train="fail_at_step: 1\n")
    write_profile(tmp_path, fake_store)
    code, out = run_ck(capsys, "run", str(spec))
    assert code == 1 and "FAILED" in out and "toy failure at step 1" in out
    st = stages(run_dirs(tmp_path)[0])
    assert st["train"]["state"] == "failed" and st["train"]["exit_code"] == 1
    assert st["eval.toy.base"]["state"] == "done"  # does not need train
    assert st["eval.toy.epoch_0"]["state"] == "pending" and "not run on pod" in st["eval.toy.epoch_0"]["error"]
    assert fake_runpod.running() == [] and not any(e.get("live") for e in st.values())
    (pod_id,) = fake_runpod.pods
    assert (tmp_path / "runpodctl.log").read_text() == f"remove pod {pod_id}\n"
    assert fake_runpod.pods[pod_id]["terminated_by"] == "pod"


def test_status_shows_a_billed_pod_and_cancel_terminates_it(fake_runpod, fake_store, tmp_path, capsys):
    spec = write_toy_spec(tmp_path, train="steps_per_epoch: 600\nstep_seconds: 0.1\n")
    write_profile(tmp_path, fake_store)
    code, out = run_ck(capsys, "run", str(spec))
    assert code == 0, out
    (pod_id,) = fake_runpod.running()
    deadline = time.monotonic() + 30
    while stages(run_dirs(tmp_path)[0])["train"]["state"] != "running":
        assert time.monotonic() < deadline, "the pod never reported its train stage running"
        run_ck(capsys, "status", str(spec))
        time.sleep(0.2)
    code, out = run_ck(capsys, "status", str(spec))
    assert "Still running and billed (1)" in out
    assert f"RunPod pod {pod_id} RUNNING: 1x {GPU}, $1.64/h" in out
    code, out = run_ck(capsys, "status", "--json", str(spec))
    rows = json.loads(out)
    assert {r["stage"]: r["state"] for r in rows}["train"] == "running"
    assert all(r["live"].startswith(f"RunPod pod {pod_id}") and r["cost_per_hr"] == 1.64 for r in rows)

    code, out = run_ck(capsys, "cancel", str(spec))
    assert code == 0 and "Cancelled 3 stage(s)" in out
    assert fake_runpod.running() == [] and fake_runpod.pods[pod_id]["terminated_by"] == "user"
    st = stages(run_dirs(tmp_path)[0])
    assert {e["state"] for e in st.values()} == {"cancelled"} and not any(e.get("live") for e in st.values())
    code, out = run_ck(capsys, "status", str(spec))
    assert "Still running" not in out


def test_no_gpu_available_starts_nothing(fake_runpod, fake_store, tmp_path, capsys):
    fake_runpod.stock[GPU] = 0
    spec = write_toy_spec(tmp_path)
    write_profile(tmp_path, fake_store)
    code, out = run_ck(capsys, "run", str(spec))
    assert code == 2 and f"RunPod has no 1x {GPU} available in SECURE cloud" in out
    assert fake_runpod.running() == []
    st = stages(run_dirs(tmp_path)[0])
    assert {e["state"] for e in st.values()} == {"pending"}
    assert all("not started" in e["error"] for e in st.values())


def test_bad_key_is_reported_before_anything_starts(fake_runpod, fake_store, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", "not-the-key")
    spec = write_toy_spec(tmp_path)
    write_profile(tmp_path, fake_store)
    code, out = run_ck(capsys, "run", str(spec))
    assert code == 2 and "rejected the API key (HTTP 401)" in out
    assert not fake_runpod.calls("podFindAndDeployOnDemand") and fake_store.keys(BUCKET) == []


def test_a_failed_second_pod_terminates_the_first(fake_runpod, fake_store, tmp_path, capsys):
    spec = write_toy_spec(tmp_path, train="steps_per_epoch: 600\nstep_seconds: 0.1\n")
    with spec.open("a") as fh:
        fh.write("sweep:\n  train.learning_rate: [1.0e-4, 2.0e-4]\n")
    write_profile(tmp_path, fake_store)
    fake_runpod.capacity = 1  # RunPod has one machine: the second run's pod finds none
    code, out = run_ck(capsys, "run", str(spec))
    assert code == 2 and "available in SECURE cloud right now" in out
    assert len(fake_runpod.pods) == 1 and fake_runpod.running() == []
    for run in run_dirs(tmp_path):
        own = [e for e in stages(run).values() if "shared" not in e]  # the base eval runs once, in shared/
        assert own and {e["state"] for e in own} == {"pending"}
        assert json.loads((run / "runpod.json").read_text())["pods"] == []
    shared = sorted((tmp_path / "runs" / "rp" / "shared").iterdir())
    assert len(shared) == 1 and {e["state"] for e in stages(shared[0]).values()} == {"pending"}
