"""The per-token rate limit, through the real API on uvicorn with a fake clock in its limiter; and the
limiter's arithmetic and memory bound on their own."""

from __future__ import annotations

import httpx
import pytest

from service.api.ratelimit import RateLimiter
from service.settings import Settings
from tests.conftest import READ_TOKEN, TOKEN, ApiServer

GOOD = {"scan_id": "limited-1", "scan_uri": "s3://scantide-scans/limited-1.mp4"}


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.now_s += seconds


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """The shared settings with a limit: 2 requests a second, bursts of 3 (``(None, 0)``: off)."""
    per_s, burst = getattr(request, "param", (2.0, 3))
    return settings.model_copy(update={"api_rate_limit_per_s": per_s, "api_rate_limit_burst": burst})


@pytest.fixture
def clock(api: ApiServer) -> FakeClock:
    """The fake clock, put into the running app's limiter."""
    fake = FakeClock()
    api.server.config.app.state.rate_limiter.clock = fake
    return fake


def assert_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limited" and response.json()["error"]["message"]
    assert set(response.json()) == {"error"}
    assert response.headers["Retry-After"] == "1"  # 0.5 s until a request may go, rounded up


def test_fourth_immediate_request_is_limited(api: ApiServer, clock: FakeClock) -> None:
    with api.client(TOKEN) as client, api.client(READ_TOKEN) as other:
        assert [client.get("/v1/queues").status_code for _ in range(3)] == [200, 200, 200]

        assert_limited(client.get("/v1/queues"))
        assert_limited(client.get("/v1/tasks/nope"))  # every authenticated path, one budget per token
        assert other.get("/v1/queues").status_code == 200  # another token is unaffected

        clock.sleep(0.5)  # one interval at 2/s: one request's worth back
        assert client.get("/v1/queues").status_code == 200
        assert_limited(client.get("/v1/queues"))

        clock.sleep(1.5)  # idle long enough: the whole burst is back
        assert [client.get("/v1/queues").status_code for _ in range(3)] == [200, 200, 200]
        assert client.get("/v1/queues").status_code == 429


def test_hot_path_is_limited_before_the_body_is_read(api: ApiServer, clock: FakeClock, settings: Settings) -> None:
    with api.client(TOKEN) as client:
        assert [client.post("/v1/scans", json={**GOOD, "scan_id": f"limited-{i}"}).status_code
                for i in range(3)] == [202, 202, 202]

        assert_limited(client.post("/v1/scans", json={**GOOD, "scan_id": "limited-4"}))
        assert_limited(client.post("/v1/scans", content=b"{not json",
                                   headers={"Content-Type": "application/json"}))  # not 400: never parsed
        assert_limited(client.post("/v1/scans", content=b"x" * (settings.max_body_bytes + 1)))  # not 413: never read
        assert client.get("/v1/scans/limited-4").status_code == 429

        clock.sleep(0.5)
        assert client.get("/v1/scans/limited-4").json()["error"]["code"] == "scan_not_found"


def test_healthz_and_openapi_are_never_limited(api: ApiServer, clock: FakeClock) -> None:
    with api.client(TOKEN) as client:
        assert {client.get("/healthz").status_code for _ in range(10)} == {200}
        assert {client.get("/openapi.json").status_code for _ in range(5)} == {200}
        # They spent nothing of the token's budget.
        assert [client.get("/v1/queues").status_code for _ in range(4)] == [200, 200, 200, 429]


def test_invalid_tokens_are_limited_and_requests_without_one_pass_to_auth(api: ApiServer, clock: FakeClock) -> None:
    with api.client("not-a-token") as guess, api.client(None) as anonymous:
        assert [guess.get("/v1/queues").status_code for _ in range(4)] == [401, 401, 401, 429]
        assert {anonymous.get("/v1/queues").status_code for _ in range(5)} == {401}


def test_the_client_waits_as_told(api: ApiServer, clock: FakeClock) -> None:
    """scantide.Client retries a 429 after its Retry-After (here on the fake clock)."""
    from scantide import Client

    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        clock.sleep(seconds)

    with Client(api.url, TOKEN, sleep=sleep) as client:
        for _ in range(4):
            client.algorithms()

    assert pauses == [1.0]


@pytest.mark.parametrize("settings", [(None, 0), (0.0, 5)], indirect=True)
def test_off_limits_nothing(api: ApiServer) -> None:
    assert api.server.config.app.state.rate_limiter is None
    with api.client(TOKEN) as client:
        assert {client.get("/v1/queues").status_code for _ in range(30)} == {200}
        response = client.post("/v1/scans", content=b"{not json", headers={"Content-Type": "application/json"})
        assert response.json()["error"]["code"] == "malformed_json"


def test_default_is_off() -> None:
    assert Settings.model_fields["api_rate_limit_per_s"].default is None


# -- the limiter on its own ------------------------------------------------------------------------
def test_limiter_spaces_requests_after_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(0.25, 2, clock=clock)  # one request every 4 s, two back to back

    assert [limiter.acquire(b"k"), limiter.acquire(b"k")] == [0.0, 0.0]
    assert limiter.acquire(b"k") == pytest.approx(4.0)
    clock.sleep(3.0)
    assert limiter.acquire(b"k") == pytest.approx(1.0)  # refused requests cost nothing
    clock.sleep(1.0)
    assert limiter.acquire(b"k") == 0.0


def test_limiter_forgets_idle_keys_and_bounds_the_busy_ones() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, 2, clock=clock, max_keys=3)

    for key in (b"a", b"b", b"c"):
        limiter.acquire(key)
    assert len(limiter) == 3
    clock.sleep(1.0)  # every key has its burst back: forgetting them changes nothing
    limiter.acquire(b"d")
    assert len(limiter) == 1

    for key in (b"e", b"f", b"g", b"h"):  # more busy keys than max_keys: the least recent goes
        limiter.acquire(key)
        limiter.acquire(key)
    assert len(limiter) == 3
    assert limiter.acquire(b"h") > 0  # the recent ones keep their state
    assert limiter.acquire(b"e") == 0.0  # forgotten early: a fresh burst
