"""The API under load on loopback with PostgreSQL, and the service's overhead on a job (issue: API under load).

    python -m bench.service        (bench/service.py: the entry point; this package: the bench)

What it starts, all on this host, and tears down afterwards:

    database  a throwaway PostgreSQL database (default peftsearch_bench on 127.0.0.1:5432), created, migrated
              with the project's Alembic migrations (store.db.upgrade), dropped at the end
    broker    the local Redis (127.0.0.1:6379) on a dedicated, empty DB number (default 14) and a queue of this
              run's own; its keys are deleted at the end
    API       `peftsearch serve` with the compose `api` service's arguments (its API processes too), with that
              DATABASE_URL and BROKER_URL: POST /v1/jobs commits the job and really publishes it to Redis
    worker    `peftsearch worker` (Celery, as the compose `worker` service), only for the overhead phase

Phases (the load generator is this process, the server another; see the notes in the report):

    post      POST /v1/jobs, open loop at --rate req/s: valid bodies on an uploaded dataset and the bundled model,
              a distinct Idempotency-Key each; nobody consumes the queue, so the jobs stay queued
    get       GET /v1/jobs/{id} at --rate req/s over the jobs the post phase made
    overhead  the same real search (all-MiniLM-L6-v2 on the shipped SST-2 sample) run --reps times directly
              (pruning.search in a fresh process) and through the service (POST, Celery worker, poll until
              succeeded), alternating; same spec, seed, torch threads and environment
    list      --seed-jobs jobs bulk-inserted for a second owner (INSERT ... SELECT on the store's tables, statuses
              mixed, succeeded ones carrying the real result and artifact row of an overhead job), then
              GET /v1/jobs?limit=100 first page, a deep cursor page, and status=failed, each at --list-rate req/s

    burst     --burst GETs at one instant (how the API copes with more requests in flight than it has threads)

Latency is measured from each request's scheduled send time (no coordinated omission). With py-spy on PATH
(`pip install py-spy`; or --py-spy PATH), each load phase is followed by a short pass at the same rate during which
py-spy samples the server, and the report says where its CPU goes. Results go to results/service.json and
service.md. Needs PostgreSQL and Redis on this host (as the service tests do) and the bundled all-MiniLM-L6-v2.
"""

DESCRIPTION = __doc__
