"""The bench's CPU sampler charges CPU to the code that used it, not to threads that wait."""

from __future__ import annotations

import threading
import time

from plugin.benchmarks.sampler import CpuSampler, merge, render


def _burn(stop: threading.Event) -> None:
    total = 0
    while not stop.is_set():
        total += sum(range(2000))


def _idle(stop: threading.Event) -> None:
    stop.wait()


def test_cpu_goes_to_the_busy_function_and_none_to_the_waiting_one() -> None:
    stop = threading.Event()
    threads = [threading.Thread(target=f, args=(stop,)) for f in (_burn, _idle)]
    sampler = CpuSampler(interval=0.005).start()
    for thread in threads:
        thread.start()
    time.sleep(0.4)
    stop.set()
    for thread in threads:
        thread.join()
    sampler.stop()
    inclusive = dict(sampler.inclusive)
    burn = next(v for k, v in inclusive.items() if k.endswith(":_burn"))
    idle = sum(v for k, v in inclusive.items() if k.endswith(":_idle"))
    assert burn > 0.8 * sampler.total
    assert idle < 0.1 * sampler.total

    report = merge([sampler.report(), sampler.report()])
    assert report["seconds"] == 2 * sampler.report()["seconds"]
    table = "\n".join(render(report, per=10))
    assert "Most self time" in table and ":_burn` " in table


def test_reset_forgets_what_was_sampled() -> None:
    sampler = CpuSampler()
    sampler.inclusive["x:y"] = 5
    sampler.total = 5
    sampler.reset()
    sampler.sample()
    assert "x:y" not in sampler.inclusive
