"""The defaults of a fit, defined once (stdlib only: the engine, ``devicefit.fit`` and the CLI, which must
start without torch, all import them from here)."""

from __future__ import annotations

#: search trials when neither trials nor minutes are given (cheap: most trials are only predicted)
TRIALS = 120
#: candidates compressed and measured per search
MAX_MEASUREMENTS = 6
#: distillation of the winner: steps, and the wall-clock cap (whichever is reached first ends it)
DISTILL_STEPS = 150
DISTILL_SECONDS = 90.0
#: quantization-aware distillation steps of the int8 static layers of a fit's chosen plan (its *finish*: the
#: search compresses candidates the quick way; ``Int8Static.finish_settings``)
FINISH_QAD_STEPS = 150
#: timed runs and untimed warm-up runs of each benchmark
RUNS = 30
WARMUP = 5
#: the measuring rule's time floor (seconds): `devicefit bench` and each block of a fit's fp32 baseline run at
#: least RUNS timed runs *and* at least this long (the agent's ``timed_runs``); at sub-millisecond latencies a
#: fixed small run count is noise (two p50s of one file on one idle agent read 0.327 and 0.178 ms)
MIN_SECONDS = 0.5
#: the floor of the short blocks a fit interleaves with fp32 (their ratio is what counts: the load cancels)
BLOCK_MIN_SECONDS = 0.05
#: wall-clock budget of the sensitivity analysis (its sample count is chosen to fit it)
SENS_SECONDS = 45.0
#: trials a ``search-worker`` runs when given neither trials nor minutes
WORKER_TRIALS = 20
#: noise-proof choice: the fastest passing candidates re-measured (at most this many) in paired rounds
CONFIRM_TOP = 4
CONFIRM_ROUNDS = 5
#: ... those first measured within this fraction of the fastest passing one
CONFIRM_WITHIN = 0.25
