"""Import boundaries and the Celery settings for long GPU jobs."""

from __future__ import annotations

import subprocess
import sys

from .support import ROOT


def imported_after(code: str) -> set[str]:
    run = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, env={"PATH": ""})
    assert run.returncode == 0, run.stderr
    return set(run.stdout.split())


def test_the_api_never_imports_torch():
    modules = imported_after("from api.app import create_app; create_app()")
    assert "fastapi" in modules and "pruning.data" in modules  # the check itself sees imports
    assert not {"torch", "transformers", "peft"} & modules


def test_the_worker_imports_torch_inside_the_task_only():
    modules = imported_after("import worker.celery_app, worker.tasks, worker.reaper, worker.embedded")
    assert "celery" in modules
    assert not {"torch", "transformers", "peft"} & modules


def test_pruning_imports_nothing_of_the_service():
    modules = imported_after("import pruning, pruning.pipeline, pruning.export")
    assert "torch" in modules
    assert not {m.split(".")[0] for m in modules} & {"api", "store", "worker", "fastapi", "sqlalchemy", "celery"}


def test_celery_is_set_for_long_gpu_jobs():
    from store.settings import Settings
    from worker.celery_app import TASK, make_celery

    settings = Settings(broker_url="redis://127.0.0.1:6379/0", job_time_limit_s=7200)
    conf = make_celery(settings).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1 and conf.worker_max_tasks_per_child == 1
    assert conf.task_time_limit == 7200 and conf.task_soft_time_limit < 7200
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.task_routes[TASK] == {"queue": "gpu"} and conf.task_default_queue == "gpu"
    assert conf.task_ignore_result


def test_the_task_is_registered_under_its_name():
    from worker.celery_app import TASK, app

    assert app.tasks[TASK].name == TASK and app.tasks[TASK].run.__module__ == "worker.tasks"


def test_an_app_runs_its_task_with_the_settings_it_was_built_from(tmp_path):
    from store.settings import Settings
    from worker.celery_app import TASK, app_for

    settings = Settings(home=tmp_path, queue="elsewhere", claim_retries=1)
    built = app_for(settings)
    assert built.tasks[TASK].app.settings is settings and built.conf.task_default_queue == "elsewhere"
    assert app_for(Settings(home=tmp_path, queue="elsewhere", claim_retries=1)) is built  # equal settings, one app
    assert app_for(Settings(home=tmp_path, queue="other")) is not built
