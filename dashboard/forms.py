"""Console forms: they turn what people type into the bodies the domain functions take."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.http import QueryDict

from sequences.errors import HubError
from sequences.instances import StartRequest, parse_start


def _field_value(text: str) -> Any:
    """One argument field: JSON when it parses (42, true, null, "quoted", [1]), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class UploadForm(forms.Form):
    package = forms.FileField(label="Package (.tar.gz)")


class StartForm(forms.Form):
    """Args as a JSON array or one value per field, appConfig as a JSON object."""

    args_mode = forms.ChoiceField(
        choices=[("fields", "one value per field"), ("json", "a JSON array")],
        initial="fields",
        widget=forms.RadioSelect,
        required=False,
    )
    args_json = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    app_config = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 4}))
    # Placement and restart policy, as the API's `placement` and `restart` (docs/api.md).
    labels = forms.CharField(required=False, max_length=1000)
    worker = forms.CharField(required=False, max_length=200)
    restart_policy = forms.ChoiceField(
        choices=[("never", "never"), ("on-failure", "on failure"), ("always", "always")],
        required=False,
    )
    restart_max = forms.IntegerField(required=False)
    restart_backoff = forms.FloatField(required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        data = self.data
        self.arg_values: list[str] = data.getlist("arg") if isinstance(data, QueryDict) else []
        self.start_request: StartRequest | None = None

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        body: dict[str, Any] = {}
        mode = data.get("args_mode")
        if mode != "json" and not any(self.arg_values) and (data.get("args_json") or "").strip():
            mode = "json"  # only the JSON box was filled in: that is what was meant
        if mode == "json":
            text = (data.get("args_json") or "").strip()
            if text:
                try:
                    body["args"] = json.loads(text)
                except ValueError as exc:
                    self.add_error("args_json", f"Args are not valid JSON: {exc}")
        else:
            values = list(self.arg_values)
            while values and values[-1] == "":
                values.pop()  # trailing empty fields are unused slots, not empty strings
            body["args"] = [_field_value(v) for v in values]
        text = (data.get("app_config") or "").strip()
        if text:
            try:
                body["appConfig"] = json.loads(text)
            except ValueError as exc:
                self.add_error("app_config", f"appConfig is not valid JSON: {exc}")
        placement: dict[str, Any] = {}
        labels = [w for w in (data.get("labels") or "").replace(",", " ").split() if w]
        if labels:
            placement["labels"] = labels
        if (data.get("worker") or "").strip():
            placement["worker"] = data["worker"].strip()
        if placement:
            body["placement"] = placement
        policy = data.get("restart_policy") or "never"
        if policy != "never":
            restart: dict[str, Any] = {"policy": policy}
            if data.get("restart_max") is not None:
                restart["max"] = data["restart_max"]
            if data.get("restart_backoff") is not None:
                restart["backoff"] = data["restart_backoff"]
            body["restart"] = restart
        if not self.errors:
            try:
                # The API's own validation, so the page and the API refuse the same things.
                self.start_request = parse_start(json.dumps(body).encode())
            except HubError as exc:
                self.add_error(_field_of(exc.message), exc.message)
        return data


def _field_of(message: str) -> str:
    """The start form's field that a start refusal (the API's message) is about."""
    if "appConfig" in message:
        return "app_config"
    if "placement.worker" in message:
        return "worker"
    if "placement" in message:
        return "labels"
    if "restart.max" in message:
        return "restart_max"
    if "restart.backoff" in message:
        return "restart_backoff"
    if "restart" in message:
        return "restart_policy"
    return "args_json"


class InputForm(forms.Form):
    stream = forms.ChoiceField(choices=[("input", "input"), ("stdin", "stdin")], initial="input")
    text = forms.CharField(required=False, strip=False, widget=forms.Textarea(attrs={"rows": 2}))
    newline = forms.BooleanField(required=False, initial=True)
    end = forms.BooleanField(required=False)


class EventForm(forms.Form):
    name = forms.CharField(max_length=200)
    message = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))

    def clean_message(self) -> Any:
        text = (self.cleaned_data.get("message") or "").strip()
        if not text:
            return None
        return _field_value(text)


class StopForm(forms.Form):
    timeout = forms.IntegerField(min_value=0, max_value=3_600_000, initial=7000, required=False)
    keepalive = forms.BooleanField(required=False)


TOKEN_LIFETIMES = [("", "never"), ("1", "1 day"), ("7", "7 days"), ("30", "30 days")]
TOKEN_LIFETIMES += [("90", "90 days"), ("365", "1 year")]
ROLE_CHOICES = [("viewer", "viewer"), ("operator", "operator"), ("admin", "admin")]


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100)
    expires_in = forms.ChoiceField(choices=TOKEN_LIFETIMES, required=False, label="expires in")
    role = forms.ChoiceField(choices=[("", "my role"), *ROLE_CHOICES], required=False)


class UserForm(forms.Form):
    """A new console user: Django's own username and password rules apply."""

    username = forms.CharField(max_length=150)
    password = forms.CharField(widget=forms.PasswordInput, min_length=8, max_length=200)
    role = forms.ChoiceField(choices=ROLE_CHOICES, initial="viewer")

    def clean_username(self) -> str:
        name = self.cleaned_data["username"].strip()
        UnicodeUsernameValidator()(name)
        if get_user_model().objects.filter(username__iexact=name).exists():
            raise forms.ValidationError(f"a user named {name!r} already exists")
        return name

    def clean_password(self) -> str:
        password = self.cleaned_data["password"]
        validate_password(password)
        return password


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=ROLE_CHOICES)


class StepsForm(forms.Form):
    """Steps as JSON text or an uploaded .json file: a list of commands, or {"commands": [...]}."""

    steps = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 6}))
    steps_file = forms.FileField(required=False)
    step_id = forms.CharField(required=False, max_length=64)

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        upload = data.get("steps_file")
        text = (data.get("steps") or "").strip()
        if upload:
            if upload.size > 4 << 20:
                self.add_error("steps_file", "The step list file is over 4 MiB.")
                return data
            text = upload.read().decode("utf-8", "replace").strip()
        if not text:
            data["commands"] = None
            return data
        try:
            value = json.loads(text)
        except ValueError as exc:
            self.add_error("steps", f"The steps are not valid JSON: {exc}")
            return data
        if isinstance(value, dict) and "commands" in value:
            value = value["commands"]
        if isinstance(value, dict):
            value = [value]
        data["commands"] = value
        return data


def first_error(form: forms.Form) -> str:
    """One readable sentence for a refused form."""
    for field, errors in form.errors.items():
        label = "" if field == "__all__" else f"{field.replace('_', ' ')}: "
        return f"{label}{errors[0]}"
    return "The form is not valid."
