"""The REST front end (FastAPI). Never imports torch: it validates with pruning's plain-data parts only."""
