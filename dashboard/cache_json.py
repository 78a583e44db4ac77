"""A JSON serializer for Django's RedisCache, in place of its default, pickle.

Sequence code that reached the hub's Redis could otherwise plant a pickle under a cache key
(the login limit's, say) and have the web process run it when it reads the key. JSON only
makes data. Integers stay raw Redis integers, as in Django's own serializer, so `incr` and
`decr` work on them.
"""

from __future__ import annotations

import json
from typing import Any


class JSONSerializer:
    def dumps(self, obj: Any) -> bytes | int:
        # type(), not isinstance(): True is an int to isinstance, and must come back as True.
        if type(obj) is int:
            return obj
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()

    def loads(self, data: bytes) -> Any:
        try:
            return int(data)
        except ValueError:
            return json.loads(data)
