"""The shop's routes as Django views, adapting the handlers of examples/shop.py."""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

import shop


def _json(request: HttpRequest) -> object:
    try:
        return json.loads(request.body)
    except ValueError:
        return None


def _respond(reply: shop.Reply) -> HttpResponse:
    content = "" if reply.payload is None else json.dumps(reply.payload)
    return HttpResponse(content, status=reply.status, content_type="application/json")


# Every route is csrf_exempt: CSRF protection guards browser sessions that cookies
# authenticate, and these routes are JSON APIs for other services and webhooks from
# payment providers, which send no CSRF token and authenticate otherwise (a real shop
# checks the provider's signature).


@csrf_exempt
@require_POST
def login(request: HttpRequest) -> HttpResponse:
    """Log a user in from the fake user table."""
    return _respond(shop.login(_json(request)))


@csrf_exempt
@require_POST
def create_order(request: HttpRequest) -> HttpResponse:
    """Create an order."""
    return _respond(shop.create_order(_json(request)))


@csrf_exempt
@require_POST
def complete_order(request: HttpRequest, order_id: str) -> HttpResponse:
    """Receive the payment provider's completion webhook."""
    return _respond(shop.complete_order(order_id, _json(request)))


@csrf_exempt
@require_POST
def fail_order(_request: HttpRequest, order_id: str) -> HttpResponse:
    """Receive the payment provider's rejection webhook."""
    return _respond(shop.fail_order(order_id))


@csrf_exempt
@require_POST
def refund_order(request: HttpRequest, order_id: str) -> HttpResponse:
    """Receive the payment provider's refund webhook."""
    return _respond(shop.refund_order(order_id, _json(request)))


@csrf_exempt
@require_http_methods(["DELETE"])
def delete_account(_request: HttpRequest) -> HttpResponse:
    """Delete the caller's account."""
    return _respond(shop.delete_account())
