"""Job execution: the Celery app, the one task that runs a job, the reaper, and the in-process runner that
executes the same task when no broker is configured."""
