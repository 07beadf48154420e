"""`alexnet-k3 study`: a plan of runs, each an ordinary run folder trained in its own process,
and one report (`study.json`, `study.md`, `study.html`).

- `plan`: presets and TOML plans, checked whole before anything runs;
- `runner`: runs what is left of a plan, resumes, records failures and skips;
- `processes`: the runs' processes and the ImageNet checkpoints' files;
- `records`: what each run folder says, and where the study ran.

Keras-free: every backend runs in a child process.
"""

from alexnet_k3.studies.plan import Plan, PlanError, load_plan
from alexnet_k3.studies.runner import study

__all__ = ["Plan", "PlanError", "load_plan", "study"]
