"""``stopwise serve``: an OpenAI-compatible server that applies calibrated policies live.

:mod:`.protocol` holds the OpenAI wire types (and only it does), :mod:`.settings`
the one settings schema, :mod:`.app` the ASGI app factory ``create_app``.
FastAPI and uvicorn are imported lazily (extra ``[serve]``).
"""
