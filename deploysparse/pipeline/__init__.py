"""`deploysparse run` and every sweep point: one run order, from a recipe and a model to report.json.

The modules, in the order a run reaches them:
- run.py: `run_recipe`, what `deploysparse run` calls: checks OUTDIR, stages the output folder beside
  it, runs the steps, writes report.json and publishes the folder in one step;
- steps.py: `run_steps`, the one step sequence a run and a sweep point share (prune, fine-tune hook,
  save, build, validate, measure, report), and each step;
- original.py: `OriginalFacts`, what the steps after prune need of the original, read in one pass;
- speed.py: latency of the original, its flushed copy and the compact model, repeated and
  interleaved, and the per-layer profile;
- report.py: the report.json dict of one run.
"""

from deploysparse.pipeline.run import RunInputs, run_recipe

__all__ = ["RunInputs", "run_recipe"]
