"""The runpod scheduler's API layer against a fake RunPod GraphQL server on 127.0.0.1."""

from __future__ import annotations

import socket

import pytest
from fake_runpod import NO_INSTANCES, FakeRunPod

GPU = "NVIDIA A100 80GB PCIe"


@pytest.fixture
def api_fake(monkeypatch: pytest.MonkeyPatch):
    from cruijff_kit_runpod.api import RunPodApi

    fake = FakeRunPod().start()  # no containers: pods just exist
    monkeypatch.setenv("RUNPOD_API_BASE_URL", fake.url)
    monkeypatch.setenv("RUNPOD_API_KEY", "test-key")
    monkeypatch.setattr(RunPodApi, "backoff", 0.01)
    yield fake
    fake.stop()


def request(**over):
    from cruijff_kit_runpod.api import PodRequest

    base = dict(name="ck-run-abc", image="example/img:1", gpu_type=GPU, gpu_count=2, cloud_type="SECURE",
                container_disk_gb=40, volume_gb=5, volume_mount_path="/workspace", docker_args="bash -c 'true'",
                env={"PLAIN": "1"})
    base.update(over)
    return PodRequest(**base)


def test_create_poll_terminate_with_the_requested_pod(api_fake):
    from cruijff_kit_runpod.api import RunPodApi

    api = RunPodApi()
    assert api.price_per_gpu_hour(GPU, "SECURE") == 1.64
    assert api.price_per_gpu_hour(GPU, "COMMUNITY") == 1.19
    pod = api.create_pod(request())
    inp = api_fake.calls("podFindAndDeployOnDemand")[0]["args"]["input"]
    assert (inp["gpuTypeId"], inp["gpuCount"], inp["cloudType"], inp["imageName"]) == (GPU, 2, "SECURE", "example/img:1")
    assert (inp["containerDiskInGb"], inp["volumeInGb"], inp["volumeMountPath"]) == (40, 5, "/workspace")
    assert inp["dockerArgs"] == "bash -c 'true'"
    assert inp["env"] == [{"key": "PLAIN", "value": "1"}]
    assert all(r["authorized"] for r in api_fake.requests)
    got = api.get_pod(pod["id"])
    assert got["desiredStatus"] == "RUNNING" and got["costPerHr"] == pytest.approx(3.28)
    api.terminate_pod(pod["id"])
    assert api.get_pod(pod["id"]) is None
    api.terminate_pod(pod["id"])  # already gone: fine
    assert api_fake.running() == []


def test_values_are_escaped_and_cannot_inject(api_fake):
    from cruijff_kit_runpod.api import RunPodApi

    tricky = 'a "quoted" value\nsecond line \\ back\tslash'
    inject = 'x" }, { key: "EVIL", value: "1'
    RunPodApi().create_pod(request(name='ck-"odd"', env={"TRICKY": tricky, "INJECT": inject}))
    inp = api_fake.calls("podFindAndDeployOnDemand")[0]["args"]["input"]
    assert inp["env"] == [{"key": "TRICKY", "value": tricky}, {"key": "INJECT", "value": inject}]
    assert inp["name"] == 'ck-"odd"'


def test_unknown_gpu_names_the_known_ones(api_fake):
    from cruijff_kit_runpod.api import RunPodApi, RunPodError

    with pytest.raises(RunPodError, match=r"no GPU type `NVIDIA A100 80GB`.*Did you mean `NVIDIA A100 80GB PCIe`"):
        RunPodApi().gpu("NVIDIA A100 80GB")


def test_missing_key_is_a_clear_error(monkeypatch):
    from cruijff_kit_runpod.api import RunPodApi, RunPodError

    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    with pytest.raises(RunPodError, match="RUNPOD_API_KEY is not set"):
        RunPodApi()


def test_401_is_fatal_and_starts_nothing(api_fake, monkeypatch):
    from cruijff_kit_runpod.api import RunPodApi, RunPodError

    monkeypatch.setenv("RUNPOD_API_KEY", "wrong-key")
    with pytest.raises(RunPodError, match=r"rejected the API key \(HTTP 401\).*RUNPOD_API_KEY"):
        RunPodApi().create_pod(request())
    assert len(api_fake.calls("podFindAndDeployOnDemand")) == 1
    assert api_fake.running() == []


def test_429_is_retried_with_backoff(api_fake):
    from cruijff_kit_runpod.api import RunPodApi

    api_fake.inject("podFindAndDeployOnDemand", 429, "Too Many Requests", times=2, headers={"Retry-After": "0"})
    pod = RunPodApi().create_pod(request())
    assert len(api_fake.calls("podFindAndDeployOnDemand")) == 3
    assert api_fake.running() == [pod["id"]]


def test_persistent_500_gives_up_with_the_status(api_fake):
    from cruijff_kit_runpod.api import RunPodApi, RunPodError

    api_fake.inject("*", 500, "<html>Internal Server Error</html>", times=100)
    api = RunPodApi()
    with pytest.raises(RunPodError, match=r"HTTP 500 \(server error\).*Gave up after 5 attempt"):
        api.get_pod("pod001x")
    with pytest.raises(RunPodError, match=r"HTTP 500.*no pod of that name exists"):
        api.create_pod(request())
    assert api_fake.running() == []


def test_lost_answer_does_not_start_a_second_pod(api_fake):
    from cruijff_kit_runpod.api import RunPodApi

    api_fake.inject("podFindAndDeployOnDemand", 502, "Bad Gateway", after=True)
    pod = RunPodApi().create_pod(request())
    assert len(api_fake.calls("podFindAndDeployOnDemand")) == 1
    assert api_fake.running() == [pod["id"]]


def test_no_gpu_available(api_fake):
    from cruijff_kit_runpod.api import NoCapacityError, RunPodApi

    api_fake.stock[GPU] = 0
    with pytest.raises(NoCapacityError, match=r"no 2x NVIDIA A100 80GB PCIe available in SECURE cloud") as err:
        RunPodApi().create_pod(request())
    assert NO_INSTANCES in str(err.value) and "Nothing was started" in str(err.value)
    assert api_fake.running() == []


def test_unreachable_api(monkeypatch):
    from cruijff_kit_runpod.api import RunPodApi, RunPodError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RUNPOD_API_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("RUNPOD_API_KEY", "k")
    monkeypatch.setattr(RunPodApi, "backoff", 0.01)
    monkeypatch.setattr(RunPodApi, "attempts", 2)
    with pytest.raises(RunPodError, match="cannot reach the RunPod API at http://127.0.0.1"):
        RunPodApi().gpu_ids()
