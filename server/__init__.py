"""The coordinator, a Flower ServerApp.

``server_app.py`` (the story of a run) -> ``strategies/`` (FedAvg, FedAdam, FedProx by name)
over ``aggregation.py`` / ``secagg.py`` (the mean, plain or SecAgg+), wrapped by
``site_records.py`` (each round by site; replies sorted once in ``replies.py``), which hands
each :class:`~server.round_log.RoundLog` to ``recorder.py`` (the run folder).
"""
