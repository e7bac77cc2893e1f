"""The example shop's Django app: its views adapt the handlers of examples/shop.py."""
