"""Micro-batches on the wire and on the client: SampleBatch columns, and the Gatherer that turns
several robots' per-sample submissions into one call with per-sample results (no Ray)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from exitflow.pipeline.live.core.sample_batch import SampleBatch
from exitflow.pipeline.live.core.sync import AudioWindow
from exitflow.pipeline.live.runtime.gather import BatchNotSent, Gatherer, GatherSettings
from exitflow.pipeline.messages import Sample


def sample(i: int, image: bool = True, text: str | None = None) -> Sample:
    payloads: dict = {}
    if image:
        payloads["image"] = np.full((1, 28, 28), i, np.float32)
    payloads["audio"] = AudioWindow(np.full(8, i, np.float32), 16000)
    if text is not None:
        payloads["text"] = text
    return Sample(i, 1000 + i, payloads, frozenset() if image else frozenset({"image"}), label=i % 10,
                  timestamps_ns={"audio": 990 + i})


# -- SampleBatch ---------------------------------------------------------------------------------
def test_sample_batch_stacks_arrays_and_gives_back_the_samples_as_views() -> None:
    samples = [sample(0, text="go"), sample(1), sample(2, image=False)]
    batch = SampleBatch.pack(samples, ["a", "b", "a"])
    assert isinstance(batch.payloads["audio"], list)  # AudioWindow objects: one entry per row
    assert isinstance(batch.payloads["text"], list) and batch.payloads["text"][1] is None
    assert isinstance(batch.payloads["image"], list)  # row 2 has no image: not stackable
    full = SampleBatch.pack(samples[:2], "r")
    image = full.payloads["image"]
    assert isinstance(image, np.ndarray) and image.shape == (2, 1, 28, 28) and full.clients == ["r", "r"]
    back = full.unpack()
    assert np.shares_memory(back[1].payloads["image"], image)  # a row view, no copy
    for got, want in zip(batch.unpack(), samples, strict=True):
        assert list(got.payloads) == list(want.payloads)
        assert (got.sample_id, got.timestamp_ns, got.missing, got.label, got.timestamps_ns) == (
            want.sample_id, want.timestamp_ns, want.missing, want.label, want.timestamps_ns)
        for m, p in want.payloads.items():
            if isinstance(p, np.ndarray):
                np.testing.assert_array_equal(got.payloads[m], p)
            else:
                assert got.payloads[m] is p
    assert batch.clients == ["a", "b", "a"] and len(batch) == 3


def test_sample_batch_keeps_ragged_or_mixed_dtype_arrays_per_row() -> None:
    a = Sample(0, 0, {"image": np.zeros((1, 28, 28), np.float32)})
    b = Sample(1, 0, {"image": np.zeros((1, 28, 28), np.uint8)})
    c = Sample(2, 0, {"image": np.zeros((96, 128), np.uint8)})
    assert isinstance(SampleBatch.pack([a, b]).payloads["image"], list)
    assert isinstance(SampleBatch.pack([b, c]).payloads["image"], list)
    with pytest.raises(ValueError, match="one client per sample"):
        SampleBatch.pack([a, b], ["only-one"])


# -- Gatherer ------------------------------------------------------------------------------------
class FakeService:
    """Records the calls; a call waits for ``release`` when ``hold`` is set; a sample with id < 0 does
    not serialise (a micro-batch holding it is not sent)."""

    def __init__(self, hold: bool = False, fail_call: bool = False):
        self.calls: list[tuple[str, list[int], list[str]]] = []
        self.release = asyncio.Event()
        if not hold:
            self.release.set()
        self.fail_call = fail_call

    async def one(self, s: Sample, client: str) -> tuple[int, str]:
        self.calls.append(("one", [s.sample_id], [client]))
        await self.release.wait()
        if s.sample_id < 0:
            raise TypeError("cannot pickle this payload")
        return (s.sample_id, client)

    async def many(self, samples, clients) -> list[tuple[int, str]]:
        if any(s.sample_id < 0 for s in samples):
            raise BatchNotSent("a payload does not serialise")
        self.calls.append(("many", [s.sample_id for s in samples], list(clients)))
        await self.release.wait()
        if self.fail_call:
            raise ConnectionError("replica died")
        return [(s.sample_id, c) for s, c in zip(samples, clients, strict=True)]


async def submit_all(gatherer: Gatherer, service: FakeService, ids: list[int], hold_first: bool) -> list:
    """Sample ids[0] first (it goes at once), then the others while its call is in flight."""
    first = asyncio.ensure_future(gatherer.submit(Sample(ids[0], 0, {}), "robot0"))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(gatherer.submit(Sample(i, 0, {}), f"robot{i % 3}")) for i in ids[1:]]
    await asyncio.sleep(0)
    if hold_first:
        service.release.set()
    return list(await asyncio.gather(first, *rest, return_exceptions=True))


def test_gatherer_sends_at_once_when_idle_and_gathers_what_waits_into_one_call() -> None:
    service = FakeService(hold=True)
    gatherer = Gatherer(service.one, service.many, GatherSettings(gather_ms=10_000.0, max_batch_size=32))
    results = asyncio.run(submit_all(gatherer, service, [0, 1, 2, 3, 4], hold_first=True))
    assert results == [(0, "robot0"), (1, "robot1"), (2, "robot2"), (3, "robot0"), (4, "robot1")]
    # the first went alone; the others waited for it (not for the 10 s bound) and went as one call
    assert service.calls == [("one", [0], ["robot0"]), ("many", [1, 2, 3, 4], ["robot1", "robot2", "robot0", "robot1"])]
    assert gatherer.stats()["calls"] == 2 and gatherer.stats()["largest_call"] == 4


def test_gatherer_caps_a_call_at_max_batch_size() -> None:
    service = FakeService(hold=True)
    gatherer = Gatherer(service.one, service.many, GatherSettings(gather_ms=10_000.0, max_batch_size=3))
    results = asyncio.run(submit_all(gatherer, service, list(range(8)), hold_first=True))
    assert [r[0] for r in results] == list(range(8))
    assert [ids for _, ids, _ in service.calls] == [[0], [1, 2, 3], [4, 5, 6], [7]]


def test_a_batch_that_cannot_be_sent_goes_one_by_one_and_only_the_bad_sample_fails() -> None:
    service = FakeService(hold=True)
    gatherer = Gatherer(service.one, service.many, GatherSettings(gather_ms=10_000.0))
    results = asyncio.run(submit_all(gatherer, service, [0, 1, -5, 3], hold_first=True))
    assert results[0] == (0, "robot0") and results[1] == (1, "robot1") and results[3] == (3, "robot0")
    assert isinstance(results[2], TypeError)
    assert gatherer.stats()["resent_one_by_one"] == 1
    assert [kind for kind, _, _ in service.calls] == ["one", "one", "one", "one"]


def test_a_failed_call_reaches_each_of_its_samples() -> None:
    service = FakeService(hold=True, fail_call=True)
    gatherer = Gatherer(service.one, service.many, GatherSettings(gather_ms=10_000.0))
    results = asyncio.run(submit_all(gatherer, service, [0, 1, 2], hold_first=True))
    assert results[0] == (0, "robot0")  # its own call succeeded
    assert all(isinstance(r, ConnectionError) for r in results[1:])


def test_gather_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="gather_ms"):
        GatherSettings(gather_ms=-1.0)
    with pytest.raises(ValueError, match="max_batch_size"):
        GatherSettings(max_batch_size=0)
