"""Prepared answers for the cached allow: what the decision core's general path concluded for
one (Authorization header, route policy, method, client `x-tenant-id`), kept so that the next
such check is answered with a lookup, an expiry check and the route's limit count.

What an answer depends on, and how the fast path (`Authorizer.allow_quickly`) keeps it exact:
- the token's verification: the key is the Authorization header's value; an answer is used
  only while the token cache holds its token (so never beyond `--token-cache-size` tokens,
  and the cache's order and counts are those of a lookup), never once the token's `exp` +
  leeway has passed (`Identity.expires_at`, as the token cache), and every key change
  (rotation, a JWKS refresh) empties the store (`generation`);
- the policy and the role and tenant decision: the route's policy string, the method and the
  client's `x-tenant-id` are part of the key; a service honouring method-override headers has
  no prepared answer for a request carrying one;
- what depends on the request itself is checked per check, before anything is counted: the
  request id (none: the general path makes one), the header room, the client address's failure
  budget, and whether an observer needs the whole `Decision` (a sampled trace, the proxy hint);
- the rate limit: counted by the in-memory limiter's allow-only path; a denial, a key it does
  not hold and the Redis limiter are the general path's.

Anything else goes to the general core, which answers as it always did (and prepares the
answer again when it allows). Public routes have no prepared answers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ext_authz.decision import Headers, Outcome
from ext_authz.limits import HeaderStyle, rate_headers
from ext_authz.ratelimit import Limit, LimitDecision
from ext_authz.tokens import Identity
from sidecar_shared.bounded import BoundedMap
from sidecar_shared.contract import RoutePolicy

# (Authorization header value, route policy string, method, client x-tenant-id)
AnswerKey = tuple[str, str, str, str | None]


@dataclass(slots=True, eq=False)
class Prepared:
    """One allow, less the request id and the limit's count. `wire` belongs to the HTTP
    transport: the answer's bytes as a template of those values (b"": it has none)."""

    token: str  # as the token cache holds it
    identity: Identity
    policy: RoutePolicy
    limit: Limit | None
    limit_key: str
    set_headers: Headers  # with `request_id_at` holding the request id
    request_id_at: int
    remove_headers: tuple[str, ...]
    method_override: bool  # the service honours method-override headers
    header_style: HeaderStyle
    wire: bytes | None = None

    @property
    def expires_at(self) -> float:
        return self.identity.expires_at

    def outcome(self, request_id: str, remaining: int, reset_s: int) -> Outcome:
        """The general core's answer for this allow (`remaining` and `reset_s` as the limiter
        answered; unused without a limit)."""
        set_headers = list(self.set_headers)
        set_headers[self.request_id_at] = (set_headers[self.request_id_at][0], request_id)
        return Outcome(
            200,
            "ok",
            "allowed",
            request_id,
            set_headers=tuple(set_headers),
            remove_headers=self.remove_headers,
            response_headers=self.response_headers(remaining, reset_s),
        )

    def response_headers(self, remaining: int, reset_s: int) -> Headers:
        limit = self.limit
        if limit is None:
            return ()
        decision = LimitDecision(True, limit.limit, remaining, reset_s, 0)
        return rate_headers(self.policy.limit_scope, limit, decision, self.header_style)


class PreparedAnswers:
    """At most `size` prepared answers (the first stored goes first), all made under one key
    generation: `clear` empties the store for the next. Thread-safe; a lookup takes no lock."""

    def __init__(self, size: int, generation: int) -> None:
        self._items: BoundedMap[AnswerKey, Prepared] = BoundedMap(size)
        self._lock = threading.Lock()
        self.generation = generation

    def get(self, key: AnswerKey) -> Prepared | None:
        return self._items.get(key)

    def put(self, key: AnswerKey, answer: Prepared, generation: int) -> None:
        """Keep `answer`, made with the keys of `generation` (generations only grow): one of
        newer keys than the store's first empties it; one of older keys is dropped."""
        with self._lock:
            if generation > self.generation:
                self._items.clear()
                self.generation = generation
            if generation == self.generation:
                self._items[key] = answer

    def clear(self, generation: int) -> None:
        """Forget every answer: the keys are now those of `generation`."""
        with self._lock:
            if generation > self.generation:
                self._items.clear()
                self.generation = generation

    def __len__(self) -> int:
        return len(self._items)
