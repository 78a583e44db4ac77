"""What every console view shares: the role guard (sync and async), feedback, typed requests."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from functools import wraps
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.utils.http import url_has_allowed_host_and_scheme
from django_htmx.middleware import HtmxDetails

from accounts.access import has_role, user_role


class HtmxHttpRequest(HttpRequest):
    """A page request: django-htmx's middleware (in every page's stack) has set `htmx`."""

    htmx: HtmxDetails


def _refusal(request: HttpRequest, user: Any, needed: str) -> HttpResponse | None:
    """None when `user` may; otherwise the answer: login for strangers, 403 for others."""
    if has_role(user, needed):
        return None
    if not user.is_authenticated:
        return redirect(f"/login/?next={request.get_full_path()}")
    text = f"Your role ({user_role(user)}) may not do this: it needs {needed}."
    if request.headers.get("HX-Request"):
        html = render_to_string("_feedback.html", {"level": "error", "text": text})
        return HttpResponse(html, status=403)
    return HttpResponse(text, status=403, content_type="text/plain; charset=utf-8")


def role_page(needed: str) -> Callable:
    """The role guard of every page: strangers go to the login page, others get a 403.

    Async views matter here: start and stop wait for a worker, and sync views under ASGI all
    share one thread, so a waiting sync view would stall every other page.
    """

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        if iscoroutinefunction(view):

            @wraps(view)
            async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                user = await request.auser()
                refused = await sync_to_async(_refusal)(request, user, needed)
                if refused is not None:
                    return refused
                return await view(request, *args, **kwargs)

            markcoroutinefunction(async_wrapper)
            return async_wrapper

        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            refused = _refusal(request, request.user, needed)
            return refused if refused is not None else view(request, *args, **kwargs)

        return wrapper

    return decorate


def back_to(request: HttpRequest, fallback: str) -> str:
    """Where a plain POST returns: the `next` field when it is ours, else `fallback`."""
    target = request.POST.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return fallback


def feedback(
    request: HtmxHttpRequest, level: str, text: str, fallback: str, status: int = 200
) -> HttpResponse:
    """Answer an action: an inline message for htmx, a flash message and a redirect without JS.

    Refusals keep their HTTP status for htmx (the page's htmx config swaps 4xx answers too),
    so tests and scripts see what happened.
    """
    if request.htmx:
        html = render_to_string("_feedback.html", {"level": level, "text": text})
        return HttpResponse(html, status=status)
    getattr(messages, "success" if level == "ok" else level)(request, text)
    return HttpResponseRedirect(back_to(request, fallback))


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.cache
def _networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def client_ip(request: HttpRequest) -> str:
    """The address a request came from, as far as the hub can tell.

    The peer's own address (REMOTE_ADDR), unless that peer is one of HUB_TRUSTED_PROXIES:
    then the right-most address in X-Forwarded-For that is not itself a trusted proxy, which
    is the address the outermost trusted proxy saw. Anything left of it was written by the
    client and is ignored. daphne runs without --proxy-headers, so nobody else's header counts.
    """
    peer = request.META.get("REMOTE_ADDR", "") or "unknown"
    trusted = _networks(tuple(getattr(settings, "HUB_TRUSTED_PROXIES", ())))
    peer_address = _address(peer)
    if not trusted or peer_address is None or not any(peer_address in n for n in trusted):
        return peer
    hops = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
    for hop in reversed([h for h in hops if h.strip()]):
        address = _address(hop)
        if address is None:
            # Not an address: nothing further left can be told apart from the client's own
            # words. Count the request under the last proxy that spoke.
            return str(peer_address)
        peer_address = address
        if not any(address in n for n in trusted):
            return str(address)
    return str(peer_address)
