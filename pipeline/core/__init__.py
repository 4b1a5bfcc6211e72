"""The pure domain core: no Kafka, no Redis, no file or network I/O, no wall clock.

Stage 1 (visitor), in enrichment order:
``events`` (parse, validate, event time, fingerprints) -> ``bots`` -> ``referrer`` /
``campaign`` -> ``sessions`` (sessionize, VisitorState) -> ``network`` (network class) ->
``company`` (waterfall) -> ``identity`` (graph rules as ops) -> ``visit`` (VisitUpdate).
``visitor`` is that chain for one visitor (``process_visitor``), the one the stage runs.

Stage 2 (account): ``intent`` (AccountState, decayed intent) -> ``fit`` -> ``filters`` ->
``qualify`` (tiers, cool-down, the quota rule, QualifiedLead). ``scoring_model`` holds the
versioned model and per-site rules; ``pages`` the URL wildcard grammar; ``model`` the
shared dataclasses.
"""
