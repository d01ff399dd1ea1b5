"""The control plane's long polls: a reader hears of a change at once, and nothing between."""

import asyncio

import pytest

from fabric.layers.watch import Watched, WatchedMap, follow


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


def test_a_map_answers_one_reader_with_only_the_keys_that_changed():
    async def run():
        m = WatchedMap()
        m.set("edge-a", {"w": 1})
        m.set("cloud-a", {"w": 2})
        version, values = await m.answer(None, 10.0)  # a new reader: every key at once
        assert values == {"edge-a": {"w": 1}, "cloud-a": {"w": 2}}
        assert not m.set("edge-a", {"w": 1})  # the same value is no change
        assert await m.answer(version, 0.01) == (version, None)
        waiter = asyncio.create_task(m.answer(version, 10.0))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        assert m.set("cloud-a", {"w": 3})
        new_version, values = await asyncio.wait_for(waiter, 1.0)  # woken: only what changed
        assert new_version > version and values == {"cloud-a": {"w": 3}}
        m.set("edge-a", {"w": 4})
        m.set("cloud-a", {"w": 5})
        assert (await m.answer(new_version, 10.0))[1] == {"edge-a": {"w": 4}, "cloud-a": {"w": 5}}
        # a version this map never gave (a reader of a producer that restarted): every key
        assert (await m.answer(m.version + 7, 10.0))[1] == m.values
        assert (await m.answer(version - 10_000, 10.0))[1] == m.values

    asyncio.run(run())
