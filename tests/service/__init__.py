"""Service tests (a package, so its conftest and helpers do not shadow the engine tests' ones)."""
