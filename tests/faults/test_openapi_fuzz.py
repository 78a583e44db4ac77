"""Fuzz every operation of the served OpenAPI document with schemathesis, as an admin.

Bounded: a few examples per operation, so the whole run stays well under three minutes. Only
the host log (`GET /log`) and a topic (`GET /topic/{name}`) are left out: they are endless by
design. Checks: no 5xx, and where a
response is declared, the body conforms to its schema.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.conftest import Hub, Person

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES_PER_OPERATION = 15
# Ninja serves OpenAPI 3.1, which schemathesis 3.x supports behind this switch.
schemathesis.experimental.OPEN_API_3_1.enable()
ENDLESS = ["/api/v1/log", "/api/v1/topic/{name}"]


def no_server_error(ctx, response, case) -> None:
    """Schemathesis' own check, restated so the failure names the request."""
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} answered {response.status_code}: "
        f"{response.text[:300]}"
    )


@pytest.fixture
def fuzz_schema(hub: Hub, people: dict[str, Person]):
    doc = httpx.get(f"{hub.api}/openapi.json", timeout=30)
    assert doc.status_code == 200
    schema = schemathesis.from_dict(doc.json(), base_url=hub.url)
    return schema.exclude(path=ENDLESS, method="GET")


@pytest.fixture
def admin_headers(people: dict[str, Person]) -> dict[str, str]:
    return people["admin"].headers()


schema = schemathesis.from_pytest_fixture("fuzz_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_operation_answers_5xx_or_breaks_its_schema(case, admin_headers):
    response = case.call(headers=admin_headers, timeout=30)
    case.validate_response(response, checks=(no_server_error, response_schema_conformance))
