"""The async implementation: the one source of the clients, streams and conversations.

Every module here except :mod:`connection` is transformed into its sync twin in
``imagegen/_sync`` by unasyncd (``[tool.unasyncd]`` in pyproject.toml); edit
these and run ``unasyncd``, never the generated files.
"""
