"""Property-based tests: random sizes, masks and options against the NumPy oracle.

Each test counts the examples it ran itself and asserts a non-trivial number,
so it holds alone, with -k and in any order.

Profiles (tests/conftest.py): `default` runs 40 examples per test in the
normal suite; `HYPOTHESIS_PROFILE=slow` runs 500 for deeper hunts:

    HYPOTHESIS_PROFILE=slow .venv/bin/python -m pytest tests/test_properties.py -s
"""

from __future__ import annotations

import numpy as np
from conftest import ATOL, RTOL, VARIANTS, as_numpy, make_layer, reference
from hypothesis import given, note, settings
from hypothesis import strategies as st

# Fewer examples than this means the profile or a filter starved the search.
MIN_EXAMPLES = 10


@st.composite
def masks(draw, batch, time):
    """Masks with the patterns users hit: none, right/left padding, gaps, empty rows."""
    kind = draw(st.sampled_from(["none", "right", "left", "random", "empty_row"]))
    if kind == "none":
        return None
    lengths = draw(st.lists(st.integers(0, time), min_size=batch, max_size=batch))
    steps = np.arange(time)
    if kind == "right":
        return np.stack([steps < n for n in lengths])
    if kind == "left":
        return np.stack([steps >= time - n for n in lengths])
    bits = draw(st.lists(st.booleans(), min_size=batch * time, max_size=batch * time))
    mask = np.array(bits, bool).reshape(batch, time)
    if kind == "empty_row":
        mask[draw(st.integers(0, batch - 1))] = False
    return mask


@st.composite
def cases(draw):
    batch, time = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    return dict(
        variant=draw(st.sampled_from(sorted(VARIANTS))),
        batch=batch,
        time=time,
        features=draw(st.integers(1, 5)),
        units=draw(st.integers(1, 6)),
        mask=draw(masks(batch, time)),
        go_backwards=draw(st.booleans()),
        zero_output_for_mask=draw(st.booleans()),
        use_bias=draw(st.booleans()),
        with_initial_state=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def test_random_configurations_equal_reference():
    ran = []

    @settings(deadline=None)
    @given(case=cases())
    def check(case):
        note(repr(case))
        ran.append(case)
        configuration_equals_reference(case)

    check()
    assert len(ran) >= MIN_EXAMPLES, f"only {len(ran)} hypothesis examples ran"


def configuration_equals_reference(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.normal(size=(case["batch"], case["time"], case["features"])).astype(
        "float32"
    )
    layer = make_layer(
        case["variant"],
        case["units"],
        case["features"],
        seed=case["seed"],
        return_sequences=True,
        return_state=True,
        go_backwards=case["go_backwards"],
        zero_output_for_mask=case["zero_output_for_mask"],
        use_bias=case["use_bias"],
    )
    n_states = len(layer.state_size)
    initial = (
        [
            rng.normal(size=(case["batch"], case["units"])).astype("float32")
            for _ in range(n_states)
        ]
        if case["with_initial_state"]
        else None
    )
    outputs, *states = layer(x, mask=case["mask"], initial_state=initial)
    want, _, want_states, _ = reference(
        case["variant"],
        layer,
        x,
        mask=case["mask"],
        initial_state=initial,
        go_backwards=case["go_backwards"],
        zero_output_for_mask=case["zero_output_for_mask"],
    )
    np.testing.assert_allclose(as_numpy(outputs), want, rtol=RTOL, atol=ATOL)
    for got, expected in zip(states, want_states):
        np.testing.assert_allclose(as_numpy(got), expected, rtol=RTOL, atol=ATOL)


def test_stateful_split_equals_whole():
    ran = []

    @settings(deadline=None)
    @given(
        variant=st.sampled_from(sorted(VARIANTS)),
        batch=st.integers(1, 3),
        split=st.integers(1, 5),
        rest=st.integers(1, 5),
        seed=st.integers(0, 2**16),
    )
    def check(variant, batch, split, rest, seed):
        ran.append(seed)
        stateful_split_equals_whole(variant, batch, split, rest, seed)

    check()
    assert len(ran) >= MIN_EXAMPLES, f"only {len(ran)} hypothesis examples ran"


def stateful_split_equals_whole(variant, batch, split, rest, seed):
    x = (
        np.random.default_rng(seed)
        .normal(size=(batch, split + rest, 3))
        .astype("float32")
    )
    layer = make_layer(
        variant, 4, 3, seed=seed, batch=batch, stateful=True, return_sequences=True
    )
    got = np.concatenate(
        [as_numpy(layer(x[:, :split])), as_numpy(layer(x[:, split:]))], 1
    )
    want, _, _, _ = reference(variant, layer, x)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    layer.reset_state()
    assert all(not np.any(as_numpy(s)) for s in layer.states)
