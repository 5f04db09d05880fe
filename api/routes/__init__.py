"""The API's routes, one module per resource. A new route goes in its resource's module (a new resource: a module
here and its router in ROUTERS)."""

from . import datasets, jobs, meta, webhooks

ROUTERS = (jobs.router, datasets.router, webhooks.router, meta.router)
