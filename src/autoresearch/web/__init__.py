"""`autoresearch web`: the night in a browser, live.

A read-only view of a workspace: what `status` says, the progress chart of `report`, every experiment with its
verdict, and one experiment as `show` gives it. It reads what the loop writes (the ledger, the runs' logs) and
writes nothing, so it runs beside a loop, after one, or with none; a page open in a browser follows the night as it
goes (server-sent events).

night.py turns a workspace into what a page shows; app.py serves it (Starlette); serve.py starts it (uvicorn).
"""
