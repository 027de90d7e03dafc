"""Send the shop's work for a minute: an order chain a second, a chord now and then,
and a reminder due in ten minutes (waiting in the broker's delayed set)."""

from __future__ import annotations

import time

from shop import charge, reserve, ship, total

from celeriac import chain, chord


def main(seconds: float = 60.0) -> None:
    order = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        order += 1
        chain(reserve.s(order), charge.s(), ship.s()).delay()
        if order % 10 == 0:
            chord([reserve.s(n) for n in range(order, order + 3)])(total.s())
            ship.apply_async((order,), countdown=600)
        time.sleep(1.0)
    print(f"sent {order} orders")


if __name__ == "__main__":
    main()
