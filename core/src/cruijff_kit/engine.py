"""The engine, for plugins that drive runs themselves (``ck eval`` builds and runs an experiment; a
scheduler's job rebuilds its run): load a spec, plan it, write run folders, run one stage.

Importing this module imports the engine (pydantic, yaml) but no feature and no torch.
"""

from cruijff_kit._engine.planner import Plan, make_plan
from cruijff_kit._engine.profile import find_profile, scheduler_profile
from cruijff_kit._engine.runner import write_experiment
from cruijff_kit._engine.spec import LoadedSpec, load_spec, parse_overrides, set_path
from cruijff_kit._engine.stage import Interrupted, load_run, run_stage

__all__ = [
    "Interrupted", "LoadedSpec", "Plan", "find_profile", "load_run", "load_spec", "make_plan", "parse_overrides",
    "run_stage", "scheduler_profile", "set_path", "write_experiment",
]
