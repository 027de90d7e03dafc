"""Code that runs inside the contestants' environments, never in the runner.

One module per contestant (`celeriac_app`, `celery_app`, `dramatiq_app`, `huey_app`)
defines the same tasks with that library and the client side of each scenario; `run` is
the command line the runner calls; `recorder` is the completion counter the measured
tasks update. Each app module imports only its own library (and `recorder`), and reads
its settings from the environment the runner sets:

- `BENCH_BROKER`: broker URL; `BENCH_BACKEND`: result backend URL (may be empty);
- `BENCH_QUEUE`: the queue (and name prefix) of this run, unique per run;
- `BENCH_STATS_DIR`: where the measured tasks keep their completion counters.
"""
