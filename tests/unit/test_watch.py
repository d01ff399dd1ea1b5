"""The control plane's long polls: a reader hears of a change at once, and nothing between."""

import asyncio

import pytest

from fabric.layers.watch import Watched, follow


def test_a_reader_out_of_date_is_answered_at_once_and_one_up_to_date_waits():
    async def run():
        w = Watched()
        w.set({"price": 40})
        version, value = await w.answer(None, 10.0)  # a new reader: at once
        assert value == {"price": 40}
        assert not w.set({"price": 40})  # the same value is no change
        t = asyncio.get_running_loop().time()
        assert await w.answer(version, 0.05) == (version, None)  # nothing new: waited, None
        assert asyncio.get_running_loop().time() - t >= 0.05
        waiter = asyncio.create_task(w.answer(version, 10.0))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        assert w.set({"price": 45})
        new_version, value = await asyncio.wait_for(waiter, 1.0)  # woken by the change
        assert new_version == version + 1 and value == {"price": 45}

    asyncio.run(run())


def test_a_restarted_producer_never_reuses_a_version_a_reader_holds():
    async def run():
        old = Watched()
        old.set("a")
        await asyncio.sleep(0.002)
        new = Watched()  # the producer restarted: versions start again from the clock
        new.set("b")
        assert (await new.answer(old.version, 10.0))[1] == "b"

    asyncio.run(run())


def test_follow_applies_changes_and_retries_a_failing_producer():
    async def run():
        w = Watched()
        w.set(1)
        seen, errors = [], []
        calls = {"n": 0}

        async def ask(since, wait_s):
            calls["n"] += 1
            if calls["n"] == 2:  # the producer restarts once
                raise ConnectionError("restarting")
            return await w.answer(since, wait_s)

        task = asyncio.create_task(follow(ask, seen.append, wait_s=5.0, retry_s=0.01,
                                          on_error=errors.append))
        await asyncio.sleep(0.05)
        w.set(2)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # 1 at first, 1 again after the failed ask (it starts from scratch), then 2
        assert seen == [1, 1, 2] and len(errors) == 1

    asyncio.run(run())
