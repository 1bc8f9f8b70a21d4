"""The coordinator: Flower ServerApp (server_app.py) and its FedAvg strategy (strategy.py)."""
