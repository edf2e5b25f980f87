"""The `ck` command line: light imports, plugin listing, schema, profile, planning at scale."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
from conftest import write_spec

HEAVY = ("torch", "transformers", "datasets", "trl", "peft", "inspect_ai", "torchtune", "runpod", "openai")


def test_import_and_help_do_not_import_heavy_libraries():
    code = (
        "import sys, json\n"
        "import cruijff_kit\n"
        "from cruijff_kit._cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "from cruijff_kit._api.registry import registry\n"
        "registry()\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Usage: ck" in res.stdout
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


def test_every_command_has_help(ck):
    for cmd in ("validate", "plan", "run", "status", "logs", "cancel", "plugins", "schema", "init", "stage",
                "models", "data"):
        res = ck(cmd, "--help")
        assert res.returncode == 0 and "Usage: ck" in res.stdout, cmd


def test_plugins_lists_kinds_and_reports_broken_plugin(with_toy, ck):
    res = ck("plugins", "--json", check=True)
    data = json.loads(res.stdout)
    names = {(p["kind"], p["name"]): p for p in data["plugins"]}
    assert names[("trainer", "toy")]["distribution"] == "ck-toy-plugin"
    assert names[("trainer", "toy")]["version"] == "0.0.1"
    assert "steps_per_epoch" in names[("trainer", "toy")]["options"]
    assert ("scheduler", "local") in names
    assert "broken" in data["failed"] and "ModuleNotFoundError" in data["failed"]["broken"]
    table = ck("plugins", check=True)
    assert "failed to load plugin `broken`" in table.stdout


def test_user_error_is_one_paragraph_without_traceback(tmp_path, with_toy, ck):
    spec = write_spec(tmp_path, """
        experiment: toy
        model: {path: m}
        dataset: {plugin: toy-data}
        train: {plugin: toy, lora: {rnk: 4}}
    """)
    res = ck("validate", str(spec))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("Error: ") and "train.lora.rnk" in res.stderr and "Did you mean `rank`?" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = ck("run", str(tmp_path / "missing.yaml"))
    assert res.returncode == 2 and "does not exist" in res.stderr and "Traceback" not in res.stderr


def test_schema_includes_plugins(with_toy, ck):
    schema = json.loads(ck("schema", check=True).stdout)
    train_variants = [branch["then"] for branch in schema["properties"]["train"]["allOf"]]
    toy = next(v for v in train_variants if v["properties"]["plugin"].get("const") == "toy")
    assert "steps_per_epoch" in toy["properties"] and toy["additionalProperties"] is False
    assert schema["additionalProperties"] is False


def test_plan_of_1000_runs_imports_no_torch(tmp_path, with_toy):
    spec = write_spec(tmp_path, """
        experiment: big
        model: {path: m}
        dataset: {plugin: toy-data}
        train: {plugin: toy}
        eval: [{plugin: toy-eval, task: t}]
        sweep:
          train.lora.rank: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
          train.learning_rate: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
          seed: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    """)
    code = (
        "import sys, json\n"
        "from cruijff_kit._engine.planner import make_plan\nfrom cruijff_kit._engine.spec import load_spec\n"
        "from cruijff_kit._engine.report import plan_markdown\n"
        f"p = make_plan(load_spec({str(spec)!r}), estimate=True)\n"
        "text = plan_markdown(p)\n"
        "print(json.dumps({'runs': len(p.runs), 'names': len({r.name for r in p.runs}), 'rows': text.count('| finetune |'),"
        " 'heavy': [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"runs": 1000, "names": 1000, "rows": 1000, "heavy": []}


def test_init_writes_profile_non_interactively(tmp_path, ck):
    path = tmp_path / "ck.profile.yaml"
    res = ck("init", "--path", str(path), "--yes", "--set", "models_cache=/scratch/me/models", check=True)
    assert "Wrote" in res.stdout
    assert yaml.safe_load(path.read_text()) == {"models_cache": "/scratch/me/models"}
    res = ck("init", "--path", str(path), "--yes", "--set", "local.api_key=sk-123456789")
    assert res.returncode == 2 and "secret" in res.stderr


def test_logs_command(tmp_path, with_toy, ck):
    spec = write_spec(tmp_path, """
        experiment: toy
        model: {path: m}
        dataset: {plugin: toy-data}
        eval: [{plugin: toy-eval, task: t}]
    """)
    ck("run", str(spec), check=True)
    (run_dir,) = (tmp_path / "runs/toy/runs").iterdir()
    res = ck("logs", str(run_dir), check=True)
    assert "logs/eval.t.base.out" in res.stdout and "stage eval.t.base of run" in res.stdout
    res = ck("logs", str(run_dir), "eval.t.bsae")
    assert res.returncode == 2 and "Did you mean `eval.t.base`?" in res.stderr

    # the same logs from the spec (or the experiment folder) and the run's name
    for target in (spec, tmp_path / "runs/toy"):
        res = ck("logs", str(target), run_dir.name, "eval.t.base", check=True)
        assert "logs/eval.t.base.out" in res.stdout and "stage eval.t.base of run" in res.stdout
    res = ck("logs", str(spec), run_dir.name[:-1] + "x")
    assert res.returncode == 2 and f"Did you mean `{run_dir.name}`?" in res.stderr
    res = ck("logs", str(spec))
    assert res.returncode == 2 and "needs a run name" in res.stderr and run_dir.name in res.stderr

    # shell completion (click's, as docs/cli.md sets it up) offers the run names, then the stages
    def complete(*words: str) -> list[str]:
        env = {"COMP_WORDS": " ".join(("ck", "logs", *words)), "COMP_CWORD": str(len(words) + 1),
               "_CK_COMPLETE": "bash_complete"}
        res = ck(check=True, env=env)
        return [line.split(",", 1)[1] for line in res.stdout.splitlines()]

    assert complete(str(spec), "") == [run_dir.name]
    assert complete(str(spec), run_dir.name, "eval.t") == ["eval.t.base"]
    assert complete(str(run_dir), "ev") == ["eval.t.base"]


def test_plan_of_a_big_sweep_prints_a_short_table_and_writes_all(tmp_path, with_toy, ck):
    spec = write_spec(tmp_path, """
        experiment: big
        model: {path: m}
        dataset: {plugin: toy-data}
        train: {plugin: toy}
        sweep:
          train.lora.rank: [1, 2, 3, 4, 5, 6, 7, 8]
          seed: [1, 2, 3, 4, 5, 6, 7, 8]
    """)
    res = ck("plan", str(spec), check=True)
    assert res.stdout.count("finetune") == 20 and "44 more runs" in res.stdout
    assert (tmp_path / "runs/big/plan.md").read_text().count("| finetune |") == 64


def test_init_asks_questions(tmp_path):
    path = tmp_path / "profile.yaml"
    answers = "myacct\ngpu\n" + "\n" * 20
    res = subprocess.run([sys.executable, "-m", "cruijff_kit", "init", "--scheduler", "slurm", "--path", str(path)],
                         input=answers, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "slurm.account" in res.stdout and "slurm.partition" in res.stdout
    profile = yaml.safe_load(path.read_text())
    assert profile["slurm"]["account"] == "myacct" and profile["slurm"]["partition"] == "gpu"
