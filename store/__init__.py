"""Persistence shared by api/ and worker/: settings, tables, sessions, and the queries both sides run.

Imports point down: api/ and worker/ import store/; store/ imports only pruning's plain-data parts (never torch).
"""
