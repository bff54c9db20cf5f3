"""--array parsing (Slurm syntax), range checks, compact rendering and MaxArraySize splitting."""
import pytest

from hpc.arrayspec import ArraySpecError, check_within, format_indices, parse, render, split


@pytest.mark.parametrize("text, indices, throttle", [
    ("0-3", (0, 1, 2, 3), None),
    ("0,3,7", (0, 3, 7), None),
    ("0-15:4", (0, 4, 8, 12), None),
    ("0-255%8", tuple(range(256)), 8),
    ("5", (5,), None),
    ("1-3,2-5,9", (1, 2, 3, 4, 5, 9), None),
    ("0-10:5,7%2", (0, 5, 7, 10), 2),
    (" 2-4 ", (2, 3, 4), None),
])
def test_parse(text, indices, throttle):
    spec = parse(text)
    assert spec.indices == indices
    assert spec.throttle == throttle


@pytest.mark.parametrize("text", ["", "a", "3-1", "0-4:0", "0-4%0", "0-4%x", "1,,2", "-1", "0-3:", "1.5"])
def test_parse_rejects_with_one_line(text):
    with pytest.raises(ArraySpecError) as info:
        parse(text)
    assert "\n" not in str(info.value)


def test_index_outside_run_is_named():
    check_within(parse("0-3"), 4, "sample")
    with pytest.raises(ArraySpecError, match=r"sample: --array index 4,9 is outside this run's shards 0-3"):
        check_within(parse("0-4,9"), 4, "sample")


def test_format_round_trip():
    assert format_indices([0, 1, 2, 3, 7, 9, 10]) == "0-3,7,9-10"
    assert render([3, 1, 2], 4) == "1-3%4"
    for text in ("0-3,7,9-10", "4", "0,2,4"):
        assert format_indices(parse(text).indices) == text


def test_split_respects_max_array_size_with_offsets():
    chunks = split(range(1024), 1001)
    assert [offset for offset, _ in chunks] == [0, 1001]
    assert chunks[0][1] == list(range(1001))
    assert chunks[1][1] == list(range(23))  # shards 1001..1023 -> array indices 0..22
    covered = sorted(offset + i for offset, idx in chunks for i in idx)
    assert covered == list(range(1024))
    assert all(max(idx) < 1001 for _, idx in chunks)


def test_split_sparse_indices():
    assert split([3, 5, 12, 13], 5) == [(0, [3]), (5, [0]), (10, [2, 3])]
    with pytest.raises(ArraySpecError):
        split([1], 0)
