"""The example shop as a Flask app, with /metrics from prometheus_client, under gunicorn.

Run it with ``gunicorn --chdir examples --bind 127.0.0.1:8000 flask_app:app`` where the
package, flask and gunicorn are installed. ``gunicorn/app.py`` reuses ``create_app`` for
several worker processes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask, Response, json, request
from prometheus_client import REGISTRY, make_wsgi_app
from werkzeug.middleware.dispatcher import DispatcherMiddleware

import shop

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry


def _respond(reply: shop.Reply) -> Response:
    body = "" if reply.payload is None else json.dumps(reply.payload)
    return Response(body, status=reply.status, mimetype="application/json")


def create_app(registry: CollectorRegistry = REGISTRY) -> DispatcherMiddleware:
    """Return the shop's routes with ``registry`` served on /metrics."""
    flask_app = Flask(__name__)

    @flask_app.post("/login")
    def login() -> Response:
        return _respond(shop.login(request.get_json(silent=True)))

    @flask_app.post("/orders")
    def create_order() -> Response:
        return _respond(shop.create_order(request.get_json(silent=True)))

    @flask_app.post("/orders/<order_id>/complete")
    def complete_order(order_id: str) -> Response:
        return _respond(shop.complete_order(order_id, request.get_json(silent=True)))

    @flask_app.post("/orders/<order_id>/fail")
    def fail_order(order_id: str) -> Response:
        return _respond(shop.fail_order(order_id))

    @flask_app.post("/orders/<order_id>/refund")
    def refund_order(order_id: str) -> Response:
        return _respond(shop.refund_order(order_id, request.get_json(silent=True)))

    @flask_app.delete("/account")
    def delete_account() -> Response:
        return _respond(shop.delete_account())

    return DispatcherMiddleware(flask_app, {"/metrics": make_wsgi_app(registry)})


app = create_app()
