"""Adapters that feed the pure core from I/O: IP databases (``geoip``), user agents
(``useragent``) and Redis reference data (``redis_store``, pipelined per batch).
``names`` holds the canonical domain and organisation-name forms they share."""
