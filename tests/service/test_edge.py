"""What every protocol edge shares: the failed-key throttle per client address."""

from __future__ import annotations

from service.edge import AuthThrottle, throttled


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_an_address_is_refused_after_too_many_failed_keys_until_the_window_passes() -> None:
    clock = Clock()
    throttle = AuthThrottle(limit=3, window_s=60.0, now=clock)
    for _ in range(3):
        assert throttle.blocked_for("1.2.3.4") is None
        throttle.failed("1.2.3.4")
        clock.t += 1
    assert throttle.blocked_for("1.2.3.4") is None  # three failures: still allowed
    throttle.failed("1.2.3.4")
    assert throttle.blocked_for("1.2.3.4") == 60.0 - 3  # until the first failure is a minute old
    assert throttle.blocked_for("5.6.7.8") is None  # other addresses are not affected
    clock.t += 57.5
    assert throttle.blocked_for("1.2.3.4") is None
    throttle.failed("1.2.3.4")  # four within the window again (the three at 1001-1003 and this one)
    assert throttle.blocked_for("1.2.3.4") == 0.5  # until the failure at 1001 is a minute old


def test_the_throttle_remembers_a_bounded_number_of_addresses() -> None:
    throttle = AuthThrottle(limit=1, window_s=60.0, max_addresses=2, now=Clock())
    for address in ("a", "b", "c"):
        throttle.failed(address)
        throttle.failed(address)
    assert throttle.blocked_for("a") is None  # forgotten (least recently failed)
    assert throttle.blocked_for("c") is not None


def test_a_throttled_answer_says_when_to_come_back() -> None:
    answer = throttled(12.2)
    assert answer.status == 429
    assert answer.headers["Retry-After"] == "13" and answer.headers["Connection"] == "close"
    assert b"too_many_failed_attempts" in answer.body  # type: ignore[operator]
