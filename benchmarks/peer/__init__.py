"""The peer: plain Flower 1.42 + Opacus, written as Flower's own Opacus example writes it.

A ClientApp (``client_app``) that builds a DataLoader over the site's rows, a fresh
``PrivacyEngine`` every round (hooks mode, Poisson sampling through Opacus's DPDataLoader) and
prints that engine's epsilon; a ServerApp (``server_app``) running Flower's message-API
``FedAvg``; both on Flower's simulation engine (``simulate``). It reuses fedllm's data loading,
partitioning, preprocessing, model and evaluation, so the two sides differ only in the
training path; its noise is calibrated with Opacus's own ``get_noise_multiplier`` to the same
true cumulative epsilon per site under the same accountant. Imported as ``peer`` with
``benchmarks/`` on ``sys.path`` (Opacus installs a top-level package named ``benchmarks``).
"""
