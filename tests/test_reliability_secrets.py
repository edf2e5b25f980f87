"""Secrets by value, and links scoped to one run on rented machines.

A real experiment (trl training and inspect evaluation of a tiny model) with fake secrets in the
environment: no file it writes holds any of them, including the members of inspect's .eval zips.
Through `ck run` with the toy plugins: secret-named variables of every shape are scrubbed or refused,
paths are kept, literal credentials in profiles are refused, job scripts are private; against the
fake RunPod and bucket: the pod's links expire and reach only its own run's objects.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import parse_qsl, urlparse

import pytest
import yaml
from conftest import write_spec
from runpod_fixtures import (
    BUCKET,
    run_ck,
    running_fake_runpod,
    running_fake_store,
    write_profile,
    write_toy_spec,
)
from slurm_fixtures import slurm_env_fixture, slurm_plugin_site_fixture, slurm_spec
from trl_fixtures import write_capitalize_data

FIXTURES = (slurm_env_fixture, slurm_plugin_site_fixture)
fake_runpod = pytest.fixture(running_fake_runpod, name="fake_runpod")
fake_store = pytest.fixture(running_fake_store, name="fake_store")

SECRETS = {"HF_TOKEN": "hf_fakeTokenQ8f3k2LmN0pZ", "WANDB_API_KEY": "wandbfake0123456789abcdef0123456789abcd",
           "OPENAI_API_KEY": "sk-fake-Zx9Yw8Vu7Ts6Rq5Po4", "RUNPOD_API_KEY": "rpa_FAKE7H6G5F4E3D2C1B0A"}


def blobs(path: Path) -> list[tuple[str, bytes]]:
    """The file's bytes, and for a zip (inspect .eval logs) every member's decompressed bytes too."""
    if sys.version_info < (3, 14):
        import zipfile_zstd  # noqa: F401  (inspect writes zstd members; this teaches zipfile to read them)

    data = path.read_bytes()
    out = [(str(path), data)]
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            out += [(f"{path}!{name}", zf.read(name)) for name in zf.namelist()]
    return out


def scan(folder: Path) -> tuple[list[str], int, int]:
    """(hits, files scanned, zip members scanned) for every secret value, raw and in JSON-escaped form."""
    hits, files, members = [], 0, 0
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        files += 1
        for where, data in blobs(path):
            members += "!" in where
            hits += [f"{where}: {name}" for name, value in SECRETS.items() if value.encode() in data]
    return hits, files, members


@pytest.mark.integration
def test_trl_and_inspect_experiment_writes_no_secret(tmp_path, tiny_llama, ck):
    from cruijff_kit._api.registry import registry

    if not {"trl"} <= set(registry().names("trainer")) or "inspect" not in registry().names("evaluator"):
        pytest.skip("the trl trainer or the inspect evaluator is not installed")
    data = write_capitalize_data(tmp_path, n_train=8, n_val=4, n_test=4, n_words=8)
    spec = write_spec(tmp_path, f"""
        experiment: secrets
        model: {{path: {tiny_llama}}}
        prompt: {{template: "Capitalize: {{input}}"}}
        dataset: {{plugin: json-instruct, path: {data.name}}}
        train: {{plugin: trl, epochs: 1, batch_size: 4, max_steps: 2, learning_rate: 0.01}}
        eval:
          - {{plugin: inspect, task: exact-match, checkpoints: all, limit: 2, generation: {{max_tokens: 4}}}}
    """)
    res = ck("run", str(spec), env=SECRETS, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    exp = tmp_path / "runs" / "secrets"
    (run_dir,) = (exp / "runs").iterdir()
    evals = list(run_dir.rglob("*.eval"))
    assert len(evals) == 2 and (run_dir / "train" / "epoch_0" / "adapter").is_dir()
    assert (run_dir / "env.json").exists() and list((run_dir / "logs").iterdir())
    hits, files, members = scan(tmp_path)
    assert hits == []
    assert files > 20 and members > 4  # the scan really saw the run's files and the logs' members
    for value in SECRETS.values():
        assert value not in res.stdout + res.stderr
    # `ck status` and `ck summarize` output carry none either
    for args in (("status", str(spec)), ("summarize", str(spec))):
        out = ck(*args, env=SECRETS)
        assert not any(v in out.stdout + out.stderr for v in SECRETS.values())
    hits, _, _ = scan(tmp_path)  # summarize writes report files
    assert hits == []


def test_scan_sees_a_secret_inside_a_zstd_zip_member(tmp_path):
    """The scanner itself: a secret only inside a compressed .eval-style member is found."""
    import zipfile_zstd  # noqa: F401

    with zipfile.ZipFile(tmp_path / "log.eval", "w", compression=zipfile.ZIP_ZSTANDARD) as zf:  # type: ignore[attr-defined]
        zf.writestr("samples/1.json", '{"env": "' + SECRETS["WANDB_API_KEY"] + '"}' + " pad" * 1000)
    assert SECRETS["WANDB_API_KEY"].encode() not in (tmp_path / "log.eval").read_bytes()
    hits, files, members = scan(tmp_path)
    assert hits == [f"{tmp_path / 'log.eval'}!samples/1.json: WANDB_API_KEY"] and files == 1 and members == 1


# --------------------------------------------------------------------------- secrets by value
# Names the old rule (a name ending in API_KEY|TOKEN|SECRET|PASSWORD) missed; values a user might have.
NEW_SECRETS = {"MY_DB_PASS": "pg-pass-Q7w8e9r0", "GITHUB_AUTH": "gha_auth_Zy5Xw4Vu3",
               "AWS_SECRET_ACCESS_KEY": "aws/secret+Key0123456789", "X_CREDENTIALS": "cred-K1L2M3N4O5"}
TOY_SPEC = """
experiment: {name}
description: "{description}"
model: {{path: {model}}}
dataset: {{plugin: toy-data}}
train: {{plugin: toy, epochs: 1}}
eval: [{{plugin: toy-eval, task: t}}]
"""


def files_holding(folder: Path, values: dict[str, str]) -> list[str]:
    """``path: NAME`` for every file under ``folder`` that holds one of the values."""
    return [f"{p}: {name}" for p in folder.rglob("*") if p.is_file()
            for name, value in values.items() if value.encode() in p.read_bytes()]


def test_secret_names_are_whole_parts_with_one_list_of_exceptions():
    from cruijff_kit.files import is_secret_name

    for name in (*NEW_SECRETS, "HF_TOKEN", "WANDB_API_KEY", "DB_PASSWD", "STRIPE_KEY", "X_APIKEY", "my_auth_token",
                 "SMTP_PASSWORD_1", "GITHUB_TOKENS"):
        assert is_secret_name(name), name
    # a part must be the whole word; names that say where a secret is, or count tokens, hold none
    for name in ("KEYBOARD_LAYOUT", "MONKEY", "TOKENIZERS_PARALLELISM", "HF_TOKEN_PATH", "SSH_AUTH_SOCK",
                 "PASSWORD_STORE_DIR", "GPG_AGENT_INFO", "KEYTIMEOUT", "MAX_TOKENS", "PAD_TOKEN", "PWD",
                 "AWS_SHARED_CREDENTIALS_FILE", "GOOGLE_APPLICATION_CREDENTIALS", "api_key_env", "PATH"):
        assert not is_secret_name(name), name


def test_scrub_keeps_existing_paths_and_matches_short_values_as_words(tmp_path):
    from cruijff_kit.files import scrub

    (tmp_path / "summer24").mkdir()
    env = {"MY_DB_PASS": "summer24", "X_CREDENTIALS": "abc1", "GITHUB_AUTH": "true", "SSH_AUTH_SOCK": "/tmp/agent.1"}
    text = (f"pw summer24 in {tmp_path}/summer24/model, not in /nonexistent/summer24/x nor in "
            "https://example.org/summer24; abc1 but not xabc12; true stays; /tmp/agent.1 stays")
    assert scrub(text, env) == (
        f"pw <MY_DB_PASS> in {tmp_path}/summer24/model, not in /nonexistent/<MY_DB_PASS>/x nor in "
        "https://example.org/<MY_DB_PASS>; <X_CREDENTIALS> but not xabc12; true stays; /tmp/agent.1 stays")


def test_ck_run_refuses_a_spec_holding_a_secret_and_writes_none(tmp_path, with_toy, ck):
    """Through `ck run`: each new-style secret's value in the spec is refused naming the field and the
    variable (never the value); a clean spec runs and no file of the experiment holds any value."""
    env = {**NEW_SECRETS, "HF_TOKEN_PATH": str(tmp_path / "hf" / "token"), "SSH_AUTH_SOCK": "/tmp/ssh-agent.sock"}
    exp = tmp_path / "runs" / "leak"
    for name, value in NEW_SECRETS.items():
        spec = write_spec(tmp_path, TOY_SPEC.format(name="leak", description=f"db at {value}", model="org/m"))
        res = ck("run", str(spec), env=env)
        assert res.returncode == 2, res.stdout + res.stderr
        assert "spec.yaml at `description`" in res.stderr and f"${name}" in res.stderr, res.stderr
        assert "name the environment variable instead" in res.stderr and "Traceback" not in res.stderr
        assert value not in res.stdout + res.stderr
        assert not (exp / "spec.yaml").exists() and not (exp / "runs").exists()
    # not secrets: their values stay as the user wrote them
    spec = write_spec(tmp_path, TOY_SPEC.format(name="leak", model="org/m",
                                                description=f"token file {env['HF_TOKEN_PATH']}, agent /tmp/ssh-agent.sock"))
    res = ck("run", str(spec), env=env, check=True)
    assert files_holding(tmp_path / "runs", NEW_SECRETS) == []
    kept = f"token file {env['HF_TOKEN_PATH']}, agent /tmp/ssh-agent.sock"
    assert yaml.safe_load((exp / "spec.yaml").read_text())["description"] == kept
    assert len(list((exp / "runs").iterdir())) == 1


def test_a_secret_equal_to_a_folder_name_keeps_the_spec_and_the_run_works(tmp_path, with_toy, ck):
    """A (weak) password that is also the name of a folder on the model's path: the run's spec.yaml keeps
    the path (rewriting it would point the run at a folder that does not exist) and the run works."""
    value = "hunter2024"
    model = tmp_path / value / "base"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "toy"}')
    spec = write_spec(tmp_path, TOY_SPEC.format(name="folder", description="weak password", model=model))
    res = ck("run", str(spec), env={"HF_TOKEN": value, "MY_DB_PASSWORD": value}, check=True)
    (run,) = (tmp_path / "runs" / "folder" / "runs").iterdir()
    assert yaml.safe_load((run / "spec.yaml").read_text())["model"]["path"] == str(model)
    adapter = json.loads((run / "train" / "epoch_0" / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(model)
    assert json.loads((run / "status.json").read_text())["stages"]["train"]["state"] == "done"
    assert "<HF_TOKEN>" not in res.stdout + (run / "spec.yaml").read_text()


# --------------------------------------------------------------------------- slurm: literal credentials, modes
def test_slurm_job_scripts_are_private_and_hold_no_secret(slurm_env, ck, tmp_path):
    spec = slurm_spec(tmp_path, experiment="private", sweep={"train.lora.rank": [4, 8]},
                      profile={"setup": ["export MY_DB_PASS=$MY_DB_PASS", "echo ready"]})
    old = os.umask(0)  # a umask that lets everyone read: the scripts must be private anyway
    try:
        res = ck("run", str(spec), "--dry-run", cwd=tmp_path, env={**slurm_env, **NEW_SECRETS})
    finally:
        os.umask(old)
    assert res.returncode == 0, res.stdout + res.stderr
    scripts = list((tmp_path / "out").rglob("*.sbatch"))
    assert len(scripts) >= 5  # 2 runs x (train, eval) + the arrays
    for script in scripts:
        mode = stat.S_IMODE(script.stat().st_mode)
        assert mode & 0o077 == 0 and mode & 0o700 == 0o700, (script, oct(mode))
    assert files_holding(tmp_path / "out", NEW_SECRETS) == []


@pytest.mark.parametrize(("section", "item", "why"), [
    ("setup", "export MY_DB_PASS=pg-pass-Q7w8e9r0", "sets MY_DB_PASS to a literal value"),
    ("setup", "pip install --index-url https://me:pw12345@pypi.example.org/simple x", "a URL with a password"),
    ("sbatch", "--comment=gha_auth_Zy5Xw4Vu3", "value of the secret environment variable $GITHUB_AUTH"),
    ("sbatch", "--x-credentials=abcdef123", "passes a literal value to --x-credentials"),
])
def test_a_literal_credential_in_the_slurm_profile_is_refused(slurm_env, ck, tmp_path, section, item, why):
    spec = slurm_spec(tmp_path, experiment="literal", profile={section: ["module load cuda", item]})
    res = ck("run", str(spec), "--dry-run", cwd=tmp_path, env={**slurm_env, **NEW_SECRETS})
    assert res.returncode == 2, res.stdout + res.stderr
    assert "ck.profile.yaml" in res.stderr and f"slurm.{section}.1" in res.stderr and why in res.stderr, res.stderr
    assert "name the environment variable instead" in res.stderr and "Traceback" not in res.stderr
    assert "pg-pass-Q7w8e9r0" not in res.stderr and "gha_auth_Zy5Xw4Vu3" not in res.stderr
    assert not list((tmp_path / "out").rglob("*.sbatch"))


def test_ck_init_refuses_a_literal_credential(tmp_path, ck):
    path = tmp_path / "profile.yaml"
    res = ck("init", "--path", str(path), "--yes", "--set", "slurm.setup=[export X_CREDENTIALS=abcdef123]")
    assert res.returncode == 2 and "X_CREDENTIALS" in res.stderr and "literal" in res.stderr, res.stderr
    assert not path.exists()


# --------------------------------------------------------------------------- RunPod: links scoped to one run
def _query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlparse(url).query))


def _status_of(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_runpod_links_expire_and_reach_only_their_own_run(fake_runpod, fake_store, tmp_path, capsys):
    # two runs of 2 stages of 45 minutes each (train, epoch eval): pods of 5400 s; their base evals are the
    # same, so it runs once, in a pod of its own for the shared folder: 2700 s
    spec = write_toy_spec(tmp_path, train="lora: {rank: 4}\n",
                          scheduler='resources: {gpus: 1, time: "00:45:00"}\n')
    text = spec.read_text().replace("train:\n", "sweep: {train.lora.rank: [4, 8]}\ntrain:\n", 1)
    text = text.replace('  resources: {gpus: 1, time: "00:10:00"}\n', "")
    spec.write_text(text)
    write_profile(tmp_path, fake_store)
    code, out = run_ck(capsys, "run", str(spec))
    assert code == 0, out
    deploys = fake_runpod.calls("podFindAndDeployOnDemand")
    assert len(deploys) == 3
    all_envs = [{e["key"]: e["value"] for e in d["args"]["input"]["env"]} for d in deploys]
    for env in all_envs:
        # no credential that reaches other runs: neither the account's API key nor the bucket's
        assert not {"RUNPOD_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"} & set(env)
    # the bundle's link covers the pod's start: min(pod time, 3600) + 900; the others its time + 900
    expiries = sorted((int(_query(env["CK_BUNDLE_URL"])["X-Amz-Expires"]),
                       *(int(_query(env[k])["X-Amz-Expires"]) for k in ("CK_RESULTS_URL", "CK_STATUS_URL", "CK_DONE_URL")))
                      for env in all_envs)
    assert expiries == [(2700 + 900,) * 4, (3600 + 900, *(5400 + 900,) * 3), (3600 + 900, *(5400 + 900,) * 3)]
    envs = [env for env in all_envs if _query(env["CK_RESULTS_URL"])["X-Amz-Expires"] == "6300"]  # the runs' pods
    keys = {u.split("?", 1)[0].split("/ck-bucket/", 1)[1] for u in (env["CK_BUNDLE_URL"] for env in all_envs)}
    assert len({tuple(k.split("/")[:3]) for k in keys}) == 3  # each pod its own objects
    a, b = (env["CK_BUNDLE_URL"] for env in envs)
    key_a, key_b = (u.split("?", 1)[0].split("/ck-bucket/", 1)[1] for u in (a, b))
    assert key_a.split("/")[:3] != key_b.split("/")[:3] and key_a.endswith("/bundle.tar.gz")

    assert _status_of(urllib.request.Request(a)) == 200
    # run A's link, pointed at run B's bundle: refused (the signature covers the one object)
    assert _status_of(urllib.request.Request(a.replace(key_a, key_b))) == 403
    # without the signature: refused (the bucket is private)
    assert _status_of(urllib.request.Request(a.split("?", 1)[0])) == 403
    # and once the link's time is over, refused too
    fake_store.clock_offset = 4501
    assert _status_of(urllib.request.Request(a)) == 403
    done_url = envs[0]["CK_DONE_URL"]
    fake_store.clock_offset = 6301
    assert _status_of(urllib.request.Request(done_url, data=b"{}", method="PUT")) == 403
    fake_store.clock_offset = 0


def test_runpod_refuses_a_public_bucket_and_account_credentials(fake_runpod, fake_store, tmp_path, capsys):
    spec = write_toy_spec(tmp_path)
    write_profile(tmp_path, fake_store, secrets=["HF_TOKEN", "AWS_SECRET_ACCESS_KEY"])
    code, out = run_ck(capsys, "validate", str(spec))
    assert code == 2 and "runpod.secrets" in out and "AWS_SECRET_ACCESS_KEY would give the pod" in out, out

    write_profile(tmp_path, fake_store)
    fake_store.public = True
    code, out = run_ck(capsys, "run", str(spec))
    assert code != 0 and "lets anyone read" in out and "deleted the object" in out, out
    assert "Traceback" not in out
    assert not fake_runpod.calls("podFindAndDeployOnDemand") and fake_store.keys(BUCKET) == []



# --------------------------------------------------------------------------- what a stage prints (its logs)
LOG_SECRET = {"MY_DB_PASS": "pg-pass-Q7w8e9r0"}
LOG_SPEC = """
experiment: {name}
model: {{path: org/m}}
dataset: {{plugin: toy-data}}
train: {{plugin: toy, epochs: 1, print_env: MY_DB_PASS{extra}}}
eval: [{{plugin: toy-eval, task: t}}]
"""


def _logs(run: Path, stage: str = "train") -> tuple[str, str]:
    # bytes decoded as they are: read_text() would turn each \r into \n
    return tuple((run / "logs" / f"{stage}.{s}").read_bytes().decode() for s in ("out", "err"))  # type: ignore[return-value]


def test_what_a_stage_and_its_child_print_reaches_the_logs_with_the_secret_named(tmp_path, with_toy, ck):
    """Through `ck run` (local scheduler): the toy trainer prints $MY_DB_PASS on stdout, stderr, in a
    progress line redrawn with \r, and from a child process (also a last line without its end): the logs
    hold `<MY_DB_PASS>` in each place, every line where it was printed, and no file holds the value."""
    spec = write_spec(tmp_path, LOG_SPEC.format(name="logs", extra=""))
    res = ck("run", str(spec), env=LOG_SECRET)
    assert res.returncode == 0, res.stdout + res.stderr
    (run,) = (tmp_path / "runs" / "logs" / "runs").iterdir()
    out, err = _logs(run)
    assert "stage out MY_DB_PASS=<MY_DB_PASS>\n" in out
    assert "child out <MY_DB_PASS>\nchild partial <MY_DB_PASS>\n" in out
    assert "stage err MY_DB_PASS=<MY_DB_PASS>\n" in err and "child err <MY_DB_PASS>\n" in err
    assert "\r50% <MY_DB_PASS>\r100% <MY_DB_PASS>\n" in err
    assert "stage train of run" in out and out.rstrip().endswith("done")  # its last line, written before exit
    assert files_holding(tmp_path / "runs", LOG_SECRET) == []
    assert LOG_SECRET["MY_DB_PASS"] not in res.stdout + res.stderr


def test_a_failing_or_refused_stage_keeps_its_exit_code_and_message_without_the_secret(tmp_path, with_toy, ck):
    """A stage that fails with the secret in its error: `ck run` exits 1 and names the failure, the log
    holds the traceback with `<MY_DB_PASS>`; `ck stage` of a stage claimed by another process still exits
    75 with its message (both through the log filter)."""
    from cruijff_kit import status
    from cruijff_kit._base.layout import RunLayout
    from cruijff_kit._engine.stage import claim_path

    spec = write_spec(tmp_path, LOG_SPEC.format(name="fails", extra=", fail_at_step: 1"))
    res = ck("run", str(spec), env=LOG_SECRET)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "RuntimeError: toy failure at step 1 (<MY_DB_PASS>)" in res.stderr, res.stderr
    (run,) = (tmp_path / "runs" / "fails" / "runs").iterdir()
    _out, err = _logs(run)
    assert "Traceback" in err and "RuntimeError: toy failure at step 1 (<MY_DB_PASS>)\n" in err, err
    entry = status.read(run)["stages"]["train"]
    assert entry["state"] == "failed" and entry["exit_code"] == 1
    assert files_holding(tmp_path / "runs", LOG_SECRET) == []

    fd = status.hold_lock(claim_path(RunLayout(run), "train"), {"pid": os.getpid(), "host": os.uname().nodename})
    assert fd is not None
    try:
        res = ck("stage", str(run), "train", env=LOG_SECRET)
    finally:
        status.release_lock(fd)
    assert res.returncode == 75, res.stdout + res.stderr
    assert f"already being run by pid {os.getpid()}" in res.stderr and "Traceback" not in res.stderr
    assert LOG_SECRET["MY_DB_PASS"] not in res.stdout + res.stderr


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (nobody may reap an orphan in a container)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_a_sigkilled_ck_stage_leaves_no_worker_alive(tmp_path, with_toy):
    """`ck run` starts the stage; the toy trainer starts a worker (as a launcher would) that records its
    pid and its parent's (the `ck stage` process) and sleeps. SIGKILL of `ck stage`: the worker is ended
    (not orphaned), the log says why, `ck run` reports the stage interrupted, and no secret is written."""
    spec = write_spec(tmp_path, LOG_SPEC.format(name="killed", extra=", worker_seconds: 600"))
    proc = subprocess.Popen([sys.executable, "-m", "cruijff_kit", "run", str(spec)], cwd=tmp_path, text=True,
                            env={**os.environ, **LOG_SECRET}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pids: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 300  # a hang guard: the handshake is the file the worker writes
        while not pids and proc.poll() is None and time.monotonic() < deadline:
            for path in (tmp_path / "runs" / "killed" / "runs").glob("*/toy-pids.json"):
                pids = json.loads(path.read_text())
            time.sleep(0.05)
        assert pids, proc.communicate()
        os.kill(pids["stage"], signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, out + err
        assert "INTERRUPTED" in err and "code -9" in err, err
        deadline = time.monotonic() + 60
        while _alive(pids["worker"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pids["worker"]), "the worker of the killed stage lives on"
    finally:
        for pid in (pids.get("worker"), pids.get("stage")):
            if pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    (run,) = (tmp_path / "runs" / "killed" / "runs").iterdir()
    _out, log_err = _logs(run)
    assert f"the `ck stage` process {pids['stage']} ended without finishing (killed?)" in log_err
    assert "stage err MY_DB_PASS=<MY_DB_PASS>" in log_err
    assert files_holding(tmp_path / "runs", LOG_SECRET) == []


def test_a_stream_cut_anywhere_is_scrubbed_like_the_whole_text(tmp_path):
    """The log filter's scrubber: the same text fed in two pieces cut at every position, with a pause
    (a flush of the partial line) at the cut, comes out as the whole text scrubbed at once; a secret
    that spans lines (a PEM key) is named line by line; bytes that are not UTF-8 pass unchanged."""
    from cruijff_kit._base.secrets import StreamScrubber

    env = {"MY_DB_PASS": "pg-pass-Q7w8e9r0", "X_CREDENTIALS": "abc1",
           "SSH_PRIVATE_KEY": "-----BEGIN KEY-----\nAAAABBBBCCCCDDDD\n-----END KEY-----"}
    text = ("pw pg-pass-Q7w8e9r0; abc1 but not xabc12\r50% pg-pass-Q7w8e9r0\nkey:\nAAAABBBBCCCCDDDD\n"
            "caf\u00e9 ").encode() + b"\xff\xc3 tail pg-pass-Q7w8e9r0"
    expected = ("pw <MY_DB_PASS>; <X_CREDENTIALS> but not xabc12\r50% <MY_DB_PASS>\nkey:\n<SSH_PRIVATE_KEY>\n"
                "caf\u00e9 ").encode() + b"\xff\xc3 tail <MY_DB_PASS>"
    for cut in range(len(text) + 1):
        s = StreamScrubber(env)
        out = s.feed(text[:cut]) + s.flush() + s.feed(text[cut:]) + s.flush(final=True)
        assert out == expected, cut
