"""`python -m bench.service`: the API under load and the service's overhead on a job. The bench is the
bench/load/ package (its docstring says what runs and how); this is its entry point."""

from __future__ import annotations

from bench.load.main import main

if __name__ == "__main__":
    raise SystemExit(main())
