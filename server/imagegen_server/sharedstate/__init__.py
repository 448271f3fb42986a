"""State shared by several replicas through Redis (``--state-url``).

Each piece implements the protocol its in-process twin already serves the
pipeline through, and falls back to that twin when Redis is unreachable and the
server fails open (``--state-fail-mode``):

- :mod:`.connection`: the Redis client, short timeouts, and the up/down
  bookkeeping every store shares (logged once per transition, counted in
  ``imagegen_shared_state_errors_total``);
- :mod:`.idempotency`: request ids (one owner per key under a renewed lease,
  results with a TTL, failures passed to the duplicates waiting);
- :mod:`.quotas`: per-caller token buckets and concurrency leases;
- :mod:`.breaker`: per-model circuit states (compare-and-set on a version).

Every multi-key operation is one Lua script, so it is atomic; the keys of one
script share a ``{hash tag}`` so a Redis Cluster keeps them in one slot.
"""
