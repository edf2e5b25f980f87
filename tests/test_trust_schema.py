"""`ck schema` is a JSON Schema (draft 2020-12) that a standard validator (`jsonschema`) accepts: every
example spec validates, and a misspelt key is refused at the top level, inside each installed
plugin's options and inside `simulate`. `ck validate` is the independent judge of what is valid."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import write_spec
from jsonschema.exceptions import best_match

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"


def ck_json(*args: str) -> Any:
    """Run the real `ck` in a subprocess and parse what it printed."""
    res = subprocess.run([sys.executable, "-m", "cruijff_kit", *args], text=True, capture_output=True,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return ck_json("schema")


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema)


def errors(validator: jsonschema.Draft202012Validator, spec: dict[str, Any]) -> list[tuple[list[Any], str]]:
    """(instance path, message) of every error, in a stable order."""
    found = [(list(e.absolute_path), e.message) for e in validator.iter_errors(spec)]
    return sorted(found, key=repr)


def refused(validator: jsonschema.Draft202012Validator, spec: dict[str, Any], path: list[Any], key: str) -> bool:
    """The spec is invalid for one reason only: the error a validator reports first (``best_match``) is
    at ``path``, and there (directly, or as the cause inside an ``anyOf`` such as "a mapping or
    null") ``key`` is not allowed."""
    top = list(validator.iter_errors(spec))
    best = best_match(top)
    unexpected = (path, f"Additional properties are not allowed ('{key}' was unexpected)")
    return len(top) == 1 and best is not None and list(best.absolute_path) == path and unexpected in tree(top)


def tree(found: list[jsonschema.ValidationError]) -> list[tuple[list[Any], str]]:
    """(instance path, message) of every error and of every error nested in its ``context``."""
    return [item for e in found for item in [(list(e.absolute_path), e.message), *tree(list(e.context))]]


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "examples" / name).read_text())


def values_of(node: Any, key: str) -> list[Any]:
    """Every value of ``key`` anywhere in a schema."""
    if isinstance(node, dict):
        own = [node[key]] if key in node else []
        return own + [r for v in node.values() for r in values_of(v, key)]
    if isinstance(node, list):
        return [r for v in node for r in values_of(v, key)]
    return []


def test_schema_is_draft_2020_12_and_every_reference_resolves(schema):
    assert schema["$schema"] == DRAFT_2020_12
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["title"] == "cruijff-kit run spec"
    found = values_of(schema, "$ref")
    assert found, "the schema uses $defs"
    for ref in found:
        assert ref.startswith("#/$defs/"), ref
        name = ref.removeprefix("#/$defs/").replace("~1", "/").replace("~0", "~")
        assert name in schema["$defs"], f"{ref} points nowhere"
    assert values_of(schema, "$defs") == [schema["$defs"]], "every definition sits at the root"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_spec_validates(validator, path):
    assert errors(validator, yaml.safe_load(path.read_text())) == []


def test_the_readme_spec_validates(validator):
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    specs = [yaml.safe_load(b) for b in blocks]
    specs = [s for s in specs if isinstance(s, dict) and "experiment" in s]
    assert specs
    for spec in specs:
        assert errors(validator, spec) == []


def test_misspelt_top_level_key_is_refused(validator):
    spec = load("demo.yaml")
    spec["expriment"] = spec.pop("experiment")
    found = errors(validator, spec)
    assert ([], "Additional properties are not allowed ('expriment' was unexpected)") in found
    assert ([], "'experiment' is a required property") in found


def test_every_installed_plugin_kind_is_typed_by_its_plugins(schema):
    installed = ck_json("plugins", "--json")["plugins"]
    props = schema["properties"]
    sections = {"dataset": props["dataset"], "trainer": props["train"], "evaluator": props["eval"]["items"],
                "scheduler": props["scheduler"]}
    for kind, section in sections.items():
        names = sorted(p["name"] for p in installed if p["kind"] == kind)
        assert section["properties"]["plugin"]["enum"] == names
        for branch in section["allOf"]:
            options = branch["then"]
            assert options["additionalProperties"] is False and "plugin" in options["properties"]


@pytest.mark.parametrize("trainer", ["trl", "torchtune"])
def test_misspelt_train_option_is_refused_for_each_trainer(validator, trainer):
    spec = load("demo.yaml")
    spec["train"]["plugin"] = trainer
    assert errors(validator, spec) == []  # the demo's options are common to both trainers
    typo = copy.deepcopy(spec)
    typo["train"]["lerning_rate"] = typo["train"].pop("learning_rate")
    assert refused(validator, typo, ["train"], "lerning_rate")
    typo = copy.deepcopy(spec)
    typo["train"]["lora"]["rnak"] = typo["train"]["lora"].pop("rank")
    assert refused(validator, typo, ["train", "lora"], "rnak")


def test_option_of_another_trainer_is_refused(validator):
    spec = load("simulate-sft-dpo.yaml")
    assert errors(validator, spec) == []  # `objective` is an option of trl
    spec["train"]["plugin"] = "torchtune"  # ... and not of torchtune
    assert refused(validator, spec, ["train"], "objective")


def test_unknown_plugin_name_is_refused(validator):
    spec = load("demo.yaml")
    spec["train"]["plugin"] = "trll"
    assert errors(validator, spec) == [(["train", "plugin"], "'trll' is not one of ['torchtune', 'trl']")]


def test_misspelt_eval_option_is_refused(validator):
    spec = load("tabular-classifier.yaml")
    typo = copy.deepcopy(spec)
    typo["eval"][0]["chekpoints"] = typo["eval"][0].pop("checkpoints")
    assert refused(validator, typo, ["eval", 0], "chekpoints")
    typo = copy.deepcopy(spec)
    typo["eval"][0]["generation"]["max_token"] = typo["eval"][0]["generation"].pop("max_tokens")
    assert refused(validator, typo, ["eval", 0, "generation"], "max_token")


def test_misspelt_dataset_and_scheduler_options_are_refused(validator):
    spec = load("llama-3.2-1b-slurm.yaml")
    typo = copy.deepcopy(spec)
    typo["scheduler"]["array_paralelism"] = typo["scheduler"].pop("array_parallelism")
    assert refused(validator, typo, ["scheduler"], "array_paralelism")
    typo = copy.deepcopy(spec)
    typo["dataset"]["pth"] = typo["dataset"].pop("path")
    found = errors(validator, typo)
    assert (["dataset"], "Additional properties are not allowed ('pth' was unexpected)") in found


@pytest.mark.parametrize(("where", "key"), [
    ((), "max_turns"),
    (("user",), "temperature"),
    (("assistant",), "batch_size"),
    (("scoring",), "candidates"),
    (("scoring", "judge"), "model"),
    (("scoring", "metrics", "accuracy"), "weight"),
    (("tasks",), "prompt_field"),
])
def test_misspelt_simulate_key_is_refused(validator, where, key):
    spec = load("simulate-sft-dpo.yaml")
    section = spec["simulate"]
    for part in where:
        section = section[part]
    section[key + "x"] = section.pop(key)
    assert refused(validator, spec, ["simulate", *where], key + "x")


def test_simulate_participants_are_typed_by_their_simulator(validator):
    spec = load("simulate-sft-dpo.yaml")
    del spec["simulate"]["user"]["model"]  # the openai simulator needs a model
    assert errors(validator, spec) == [(["simulate", "user"], "'model' is a required property")]
    spec = load("simulate-sft-dpo.yaml")
    spec["simulate"]["assistant"]["base_url"] = "http://localhost:8000/v1"  # an openai option, not local's
    assert refused(validator, spec, ["simulate", "assistant"], "base_url")


SWEEP_SPEC = """
    experiment: toy-sweep
    model: {path: m}
    dataset: {plugin: toy-data}
    train: {plugin: toy, learning_rate: 0.1, lora: {rank: 2}}
    eval: [{plugin: toy-eval, task: t}]
    sweep:
      train.lora.rank: [1, 2]
      eval[0].checkpoints: [all, last]
      seed: [1, 2]
    variants:
      - {train.learning_rate: 0.1}
      - {train.steps_per_epoch: 2, dataset.rows: 4}
"""


def test_sweep_and_variants_with_dotted_paths_validate_and_a_toy_plugin_is_typed(with_toy, ck, tmp_path):
    toy_schema = json.loads(ck("schema", check=True).stdout)
    validator = jsonschema.Draft202012Validator(toy_schema)
    spec_file = write_spec(tmp_path, SWEEP_SPEC)
    ck("validate", str(spec_file), check=True)  # ck itself accepts it
    spec = yaml.safe_load(spec_file.read_text())
    assert errors(validator, spec) == []

    typo = copy.deepcopy(spec)
    typo["train"]["steps_per_epch"] = 2  # an option of the third-party toy trainer, misspelt
    assert refused(validator, typo, ["train"], "steps_per_epch")
    assert ck("validate", str(write_spec(tmp_path, yaml.safe_dump(typo), "typo.yaml"))).returncode == 2

    typo = copy.deepcopy(spec)
    typo["sweep"]["trian.lora.rank"] = typo["sweep"].pop("train.lora.rank")
    assert [path for path, _ in errors(validator, typo)] == [["sweep"]]
    assert ck("validate", str(write_spec(tmp_path, yaml.safe_dump(typo), "typo.yaml"))).returncode == 2

    typo = copy.deepcopy(spec)
    typo["variants"][1]["datset.rows"] = typo["variants"][1].pop("dataset.rows")
    assert [path for path, _ in errors(validator, typo)] == [["variants", 1]]
    assert ck("validate", str(write_spec(tmp_path, yaml.safe_dump(typo), "typo.yaml"))).returncode == 2


def test_train_may_be_left_out_or_null(validator):
    spec = load("demo.yaml")
    del spec["train"]
    assert errors(validator, spec) == []
    spec["train"] = None
    assert errors(validator, spec) == []


def test_a_plugin_option_json_schema_cannot_express_leaves_that_plugin_unchecked(monkeypatch):
    from collections.abc import Callable

    from cruijff_kit import TrainConfig
    from cruijff_kit._api.registry import Registered, registry
    from cruijff_kit._engine.schema import spec_json_schema

    class OddConfig(TrainConfig):
        hook: Callable[[], int] = lambda: 1  # no JSON Schema for a callable

    class Odd:
        Config = OddConfig
        description = "A trainer with a callable option."

    monkeypatch.setitem(registry().plugins["trainer"], "odd", Registered(Odd, "trainer", "odd-dist", "0"))
    schema = spec_json_schema()  # no traceback for the whole schema because of one plugin
    jsonschema.Draft202012Validator.check_schema(schema)
    odd = next(b["then"] for b in schema["properties"]["train"]["allOf"] if b["if"]["properties"]["plugin"]["const"] == "odd")
    assert odd["description"].startswith("A trainer with a callable option. Options not expressible in JSON Schema")
    spec = load("demo.yaml")
    spec["train"] = {"plugin": "odd", "anything": 1}
    assert errors(jsonschema.Draft202012Validator(schema), spec) == []
    spec["train"]["plugin"] = "trl"  # the other trainers are still checked
    assert refused(jsonschema.Draft202012Validator(schema), spec, ["train"], "anything")


def test_scorer_names_as_shorthand_validate_and_a_misspelt_one_is_refused(validator):
    spec = load("tabular-classifier.yaml")
    short = copy.deepcopy(spec)
    short["eval"][0]["scorers"] = ["match", {"name": "classification", "labels": ["yes", "no"]}]
    assert errors(validator, short) == []
    short["eval"][0]["scorers"] = "includes"
    assert errors(validator, short) == []
    typo = copy.deepcopy(spec)
    typo["eval"][0]["scorers"] = ["mtach"]
    assert errors(validator, typo) != []
