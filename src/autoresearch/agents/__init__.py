"""Agents propose experiments: a one-line hypothesis and a new train.py.

Backends: `tune` (Optuna over train.py's constants, offline), `anthropic` and `openai` (LLM APIs,
answering with SEARCH/REPLACE edits), `command` (any CLI coding agent that edits train.py itself).
"""
