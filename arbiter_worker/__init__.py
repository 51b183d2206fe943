"""The GPU worker: Django-free. It needs the broker URL, the API URL, its credential and its GPU slots.

Start it with `python -m arbiter_worker` (see README, *A GPU host*). It consumes `training.supervise_run` tasks
from the broker, claims each run through the worker API, starts the engine (under torchrun when the run asks
for several GPUs) on free slots, reports the engine's output through the run-token ingest API, beats, honours
cancel and records the exit — the same duties as the in-process supervisor, with no database access.
"""
