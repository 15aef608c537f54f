from autoresearch.cli import entry

raise SystemExit(entry())
