"""Log in and out, with a cache-backed limit on failed attempts per username and address.

The address is the peer's own (`client_ip`: X-Forwarded-For counts only from
HUB_TRUSTED_PROXIES), so a client can neither spread its guesses over made-up addresses nor
spend someone else's attempts: failures from one address never lock the same username out
from another. From this machine's loopback, the local user that opened the connection counts
too (`limit_address`), so sequence code on 127.0.0.1 cannot lock out an operator there.
The counters are plain integers in the cache (JSON, never pickle).
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.contrib.auth import login, logout
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST

from accounts.access import audit
from dashboard.local_peers import peer_uid
from dashboard.views.common import client_ip

LOCKOUT_SECONDS = 15 * 60


def _attempts_key(username: str, ip: str) -> str:
    # Hashed so odd usernames make valid, bounded cache keys.
    digest = hashlib.sha256(f"{username.lower()}\0{ip}".encode()).hexdigest()[:32]
    return f"login-fail:{digest}"


def limit_address(request: HttpRequest) -> str:
    """Whom the login limit counts an attempt against: the client's address and, for a
    connection from this machine's loopback, the local user that opened it (sequence code
    runs here as user ids of its own, and must not spend the attempts of an operator's
    browser on 127.0.0.1: dashboard/local_peers.py)."""
    address = client_ip(request)
    if address == request.META.get("REMOTE_ADDR"):  # the peer itself, not a proxied client
        uid = peer_uid(address, request.META.get("REMOTE_PORT"))
        if uid is not None:
            return f"{address} uid {uid}"
    return address


def _safe_next(request: HttpRequest, target: str) -> str:
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return "/"


@require_http_methods(["GET", "POST"])
def login_view(request: HttpRequest) -> HttpResponse:
    next_url = request.POST.get("next") or request.GET.get("next") or ""
    form = AuthenticationForm(request, data=request.POST or None)
    refused = ""
    status = 200
    if request.method == "POST":
        username = request.POST.get("username", "")
        address = limit_address(request)
        key = _attempts_key(username, address)
        try:
            failures = cache.get(key, 0)
        except ValueError:  # not JSON: not written by the hub
            failures = None
        if type(failures) is not int:
            failures = settings.HUB_LOGIN_ATTEMPTS  # not ours: refuse rather than guess
        if failures >= settings.HUB_LOGIN_ATTEMPTS:
            refused = (
                f"Too many failed log-ins for '{username}' from your address "
                f"({failures}). Wait 15 minutes and try again, or ask an admin."
            )
            audit(None, "login", username, outcome="refused", reason="rate limit", address=address)
            status = 429
        elif form.is_valid():
            cache.delete(key)
            login(request, form.get_user())
            audit(form.get_user(), "login", username, address=address)
            return HttpResponseRedirect(_safe_next(request, next_url))
        else:
            # Who tried which name from where: an operator sees guessing in the audit log.
            audit(
                None,
                "login",
                username[:150],
                outcome="refused",
                reason="bad credentials",
                address=address,
            )
            # add() starts the 15-minute window; incr() keeps it.
            if not cache.add(key, 1, LOCKOUT_SECONDS):
                try:
                    cache.incr(key)
                except ValueError:
                    cache.set(key, 1, LOCKOUT_SECONDS)
            status = 401
    context = {"form": form, "next": next_url, "refused": refused}
    return render(request, "login.html", context, status=status)


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        audit(request.user, "logout", request.user.get_username())
    logout(request)
    return redirect("login")
