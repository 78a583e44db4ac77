"""The audit log (filterable), API tokens (shown once at creation, revocable, optionally
lapsing and capped to a role) and, for admins, the users and their roles."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import push_url

from accounts.access import (
    AccessError,
    audit,
    has_role,
    issue_token,
    set_active,
    set_role,
    user_role,
)
from accounts.models import ApiToken, AuditEntry
from dashboard.forms import RoleForm, TokenForm, UserForm, first_error
from dashboard.paging import keyset_page
from dashboard.views.common import HtmxHttpRequest, role_page

AUDIT_PAGE = 100


@require_GET
@role_page("viewer")
def audit_log(request: HtmxHttpRequest) -> HttpResponse:
    fields = ("actor", "action", "target", "outcome")
    filters = {k: request.GET.get(k, "").strip()[:200] for k in fields}
    rows = AuditEntry.objects.all()
    if filters["actor"]:
        rows = rows.filter(actor__icontains=filters["actor"])
    if filters["action"]:
        rows = rows.filter(action__startswith=filters["action"])
    if filters["target"]:
        rows = rows.filter(target__icontains=filters["target"])
    if filters["outcome"]:
        rows = rows.filter(outcome=filters["outcome"])
    cursors = {k: request.GET.get(k, "") for k in ("next", "prev")}
    page = keyset_page(rows, {**filters, **cursors}, size=AUDIT_PAGE)
    context = {
        "entries": page.rows,
        "page": page,
        "filters": filters,
        "limit": AUDIT_PAGE,
        # order_by("action"): with the model's ordering, DISTINCT would be over every row.
        "actions": list(
            AuditEntry.objects.order_by("action").values_list("action", flat=True).distinct()
        ),
    }
    if request.htmx and request.htmx.target == "rows":
        # Only the rows; the address bar takes the filters, so a reload keeps them.
        response = render(request, "access/audit.html#rows", context)
        query = urlencode({k: v for k, v in {**filters, **cursors}.items() if v})
        push_url(response, reverse("audit") + (f"?{query}" if query else ""))
        return response
    return render(request, "access/audit.html", context)


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
        "now": timezone.now(),
        "lifetimes": TokenForm.base_fields["expires_in"].choices,  # type: ignore[attr-defined]
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
    days = form.cleaned_data.get("expires_in") or ""
    expires = timezone.now() + timedelta(days=int(days)) if days else None
    try:
        token, raw = issue_token(
            request.user, form.cleaned_data["name"], expires, form.cleaned_data.get("role") or ""
        )
    except AccessError as exc:
        messages.error(request, str(exc))
        return HttpResponseRedirect(reverse("tokens"))
    audit(
        request.user,
        "token.create",
        token.prefix,
        name=token.name,
        role=token.role or "owner's",
        expires=expires.isoformat() if expires else None,
    )
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


# -- users (admins) ---------------------------------------------------------------------------


@require_GET
@role_page("admin")
def users(request: HttpRequest) -> HttpResponse:
    people = list(get_user_model().objects.order_by("-is_active", "username"))
    for person in people:
        person.hub_role = user_role(person)  # type: ignore[attr-defined]
    return render(request, "access/users.html", {"people": people, "form": UserForm()})


@require_POST
@role_page("admin")
def user_create(request: HttpRequest) -> HttpResponse:
    form = UserForm(request.POST)
    if not form.is_valid():
        people = list(get_user_model().objects.order_by("-is_active", "username"))
        for person in people:
            person.hub_role = user_role(person)  # type: ignore[attr-defined]
        # The form again, with the refusal beside the field and what was typed (not the password).
        return render(request, "access/users.html", {"people": people, "form": form}, status=400)
    data = form.cleaned_data
    person = get_user_model().objects.create_user(data["username"], password=data["password"])
    set_role(person, data["role"])
    audit(request.user, "user.create", person.get_username(), role=data["role"])
    messages.success(request, f"Added {person.get_username()} as {data['role']}.")
    return HttpResponseRedirect(reverse("users"))


def _person(user_id: int) -> object | None:
    return get_user_model().objects.filter(pk=user_id).first()


@require_POST
@role_page("admin")
def user_role_change(request: HttpRequest, user_id: int) -> HttpResponse:
    person = _person(user_id)
    form = RoleForm(request.POST)
    if person is None:
        messages.error(request, "No such user.")
    elif not form.is_valid():
        messages.error(request, first_error(form))
    else:
        role = form.cleaned_data["role"]
        before = user_role(person)
        try:
            set_role(person, role)
        except AccessError as exc:
            messages.error(request, str(exc))
            audit(request.user, "user.role", str(person), outcome="refused", reason=str(exc))
        else:
            audit(request.user, "user.role", str(person), before=before, role=role)
            messages.success(request, f"{person} is now {role}.")
    return HttpResponseRedirect(reverse("users"))


@require_POST
@role_page("admin")
def user_active(request: HttpRequest, user_id: int) -> HttpResponse:
    person = _person(user_id)
    active = request.POST.get("active") == "1"
    if person is None:
        messages.error(request, "No such user.")
        return HttpResponseRedirect(reverse("users"))
    action = "user.activate" if active else "user.deactivate"
    try:
        set_active(person, active, request.user)
    except AccessError as exc:
        messages.error(request, str(exc))
        audit(request.user, action, str(person), outcome="refused", reason=str(exc))
    else:
        audit(request.user, action, str(person))
        messages.success(
            request,
            f"{person} can log in again."
            if active
            else f"{person} is deactivated: log-ins and tokens refused, history kept.",
        )
    return HttpResponseRedirect(reverse("users"))
