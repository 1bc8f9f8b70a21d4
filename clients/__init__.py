"""A site: Flower ClientApp (client_app.py) and one round of local DP training (train.py)."""
