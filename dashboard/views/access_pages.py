"""The audit log (filterable) and API tokens (shown once at creation, revocable)."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from accounts.access import audit, has_role
from accounts.models import ApiToken, AuditEntry
from dashboard.forms import TokenForm, first_error
from dashboard.views.common import HtmxHttpRequest, role_page

AUDIT_PAGE = 200


@require_GET
@role_page("viewer")
def audit_log(request: HtmxHttpRequest) -> HttpResponse:
    filters = {k: request.GET.get(k, "").strip() for k in ("actor", "action", "target", "outcome")}
    rows = AuditEntry.objects.all()
    if filters["actor"]:
        rows = rows.filter(actor__icontains=filters["actor"])
    if filters["action"]:
        rows = rows.filter(action__startswith=filters["action"])
    if filters["target"]:
        rows = rows.filter(target__icontains=filters["target"])
    if filters["outcome"]:
        rows = rows.filter(outcome=filters["outcome"])
    context = {
        "entries": list(rows[:AUDIT_PAGE]),
        "filters": filters,
        "limit": AUDIT_PAGE,
        "actions": sorted(set(AuditEntry.objects.values_list("action", flat=True).distinct())),
    }
    template = "access/audit.html"
    if request.htmx and request.GET.get("partial") == "rows":
        template += "#rows"
    return render(request, template, context)


def _visible_tokens(request: HttpRequest) -> list[ApiToken]:
    """Everyone manages their own tokens (the CLI needs one at any role); admins see all."""
    rows = ApiToken.objects.select_related("user")
    user = request.user
    if not has_role(user, "admin"):
        # An anonymous visitor (HUB_ANONYMOUS_ROLE) has no tokens of its own.
        rows = rows.filter(user=user) if user.is_authenticated else rows.none()
    return list(rows.order_by("revoked", "-created"))


@require_GET
@role_page("viewer")
def tokens(request: HttpRequest) -> HttpResponse:
    context = {
        "tokens": _visible_tokens(request) if request.user.is_authenticated else [],
        "new_token": request.session.pop("new_token", None),
    }
    return render(request, "access/tokens.html", context)


@require_POST
@role_page("viewer")
def token_create(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        messages.error(request, "Log in to make a token: a token acts as a user.")
        return HttpResponseRedirect(reverse("tokens"))
    form = TokenForm(request.POST)
    if not form.is_valid():
        messages.error(request, first_error(form))
        return HttpResponseRedirect(reverse("tokens"))
    token, raw = ApiToken.issue(request.user, form.cleaned_data["name"])
    audit(request.user, "token.create", token.prefix, name=token.name)
    # Shown once, on the page the redirect leads to; only its hash is stored.
    request.session["new_token"] = {"name": token.name, "raw": raw}
    return HttpResponseRedirect(reverse("tokens"))


@require_POST
@role_page("viewer")
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    rows = ApiToken.objects.filter(pk=token_id, revoked__isnull=True)
    if not has_role(request.user, "admin"):
        rows = rows.filter(Q(user=request.user) if request.user.is_authenticated else Q(pk=None))
    token = rows.first()
    if token is None:
        messages.error(request, "No such active token of yours.")
        return HttpResponseRedirect(reverse("tokens"))
    token.revoked = timezone.now()
    token.save(update_fields=["revoked"])
    audit(request.user, "token.revoke", token.prefix, name=token.name, owner=token.user.username)
    messages.success(request, f"Revoked token {token.name} ({token.prefix}…).")
    return HttpResponseRedirect(reverse("tokens"))
