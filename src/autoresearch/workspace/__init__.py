"""Research workspaces: the train.py template, the locked apparatus config, and (later) git and program.md."""
