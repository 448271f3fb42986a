"""imagegen_cli: the ``imagegen`` command, the top layer above the SDK (``imagegen``) and the server.

Run it as ``imagegen`` (the console script) or ``python -m imagegen_cli``.
"""
