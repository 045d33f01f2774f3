"""Per-view threads (glimpse.threads.map_views) and huge-page buffers (glimpse.buffers): same results as serial code."""
import threading

import pytest
import torch

from glimpse import buffers
from glimpse.threads import map_views, single_threaded, view_groups, view_threads


def test_map_views_gives_the_serial_results_in_order():
    x = torch.rand(9, 64, 64, generator=torch.Generator().manual_seed(0))

    def one(i):
        return (x[i].exp() * x[(i + 1) % 9]).sum(dtype=torch.float64)

    assert torch.equal(torch.stack(map_views(one, range(9))), torch.stack([one(i) for i in range(9)]))


def test_map_views_runs_single_threaded_workers_in_the_callers_mode():
    seen = []

    def one(i):
        seen.append((threading.current_thread().name, torch.get_num_threads(), torch.is_grad_enabled(),
                     torch.is_inference_mode_enabled()))
        return i

    with torch.inference_mode():
        assert map_views(one, range(6)) == list(range(6))
    if view_threads() > 1:
        assert all(name.startswith("glimpse-view") for name, *_ in seen)
    assert all(tuple(mode) == (1, False, True) for _, *mode in seen)
    before = torch.get_num_threads()
    map_views(one, range(2))
    assert torch.get_num_threads() == before  # the caller's thread count is restored


def test_map_views_is_serial_inside_a_task_and_raises_a_tasks_error():
    def inner(i):
        return threading.current_thread().name

    def outer(i):
        return map_views(inner, range(3))

    for names in map_views(outer, range(2)):
        assert len(set(names)) == 1  # the nested map ran on its task's own thread

    def fail(i):
        if i == 3:
            raise ValueError("view 3")
        return i

    with pytest.raises(ValueError, match="view 3"):
        map_views(fail, range(5))


def test_map_views_on_a_gpu_device_is_a_plain_loop():
    names = map_views(lambda i: threading.current_thread().name, range(4), device="meta")
    assert set(names) == {threading.current_thread().name}


@pytest.mark.parametrize("n, per_group", [(16, 4), (10, 4), (3, 4), (5, 1)])
def test_view_groups_cover_every_view_once_in_order(monkeypatch, n, per_group):
    monkeypatch.setattr("glimpse.threads.VIEWS_PER_GROUP", per_group)
    groups = view_groups(n)
    assert [i for g in groups for i in range(n)[g]] == list(range(n))
    assert all(0 < g.stop - g.start <= per_group for g in groups)
    assert view_groups(n, device="meta") == [slice(0, n)]  # a GPU batch stays one launch per op


def test_single_threaded_restores_the_count():
    before = torch.get_num_threads()
    with single_threaded():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool, torch.uint8, torch.float64])
def test_buffers_are_plain_cpu_tensors(dtype):
    e, z = buffers.empty((3, 1024, 1024), dtype), buffers.zeros((2, 5), dtype)
    assert e.shape == (3, 1024, 1024) and e.dtype == dtype and e.is_contiguous() and e.device.type == "cpu"
    assert z.dtype == dtype and not z.any()
    e.fill_(1)
    assert bool(e.all())
