"""The suite's own layout for `make test` (conftest.pytest_collection_modifyitems)."""

import types

import conftest


def _items(names):
    return [types.SimpleNamespace(nodeid=f"tests/{n}") for n in names]


def test_blocks_open_the_parts_that_worksteal_sends_and_quick_modules_end_them(monkeypatch):
    """Worker 0's part opens with the ablation block, worker 1's with the multi-process block;
    the sub-second modules end both parts; nothing is lost or repeated."""
    names = (
        [f"test_quick{i}.py::t" for i in range(30)]
        + ["test_multihost.py::a", "test_ablate.py::test_ablate_writes_the_table[4]"]
        + [f"test_optim.py::t{i}" for i in range(6)]
        + ["test_multihost.py::b", "test_ablate.py::test_ablate_bad_table_and_rows"]
        + ["test_train.py::test_resume_after_sigkill_is_exact"]
    )
    items = _items(names)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    conftest.pytest_collection_modifyitems(items)
    order = [i.nodeid.removeprefix("tests/") for i in items]
    assert sorted(order) == sorted(names)
    half = len(order) // 2  # worksteal sends worker 0 the first len // 2
    assert order[:2] == [
        "test_ablate.py::test_ablate_writes_the_table[4]",
        "test_ablate.py::test_ablate_bad_table_and_rows",
    ]
    assert order[half : half + 3] == [
        "test_multihost.py::a",
        "test_multihost.py::b",
        "test_train.py::test_resume_after_sigkill_is_exact",
    ]
    for part in (order[:half], order[half:]):
        assert part[-3:] == [n for n in part if n.startswith("test_optim.py")]
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "1")  # one process: both blocks first
    conftest.pytest_collection_modifyitems(items)
    assert [i.nodeid for i in items][:5] == [f"tests/{n}" for n in order[:2] + order[half:][:3]]
