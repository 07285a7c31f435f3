"""The independent oracle: the equations of lstm.py and gru.py in NumPy, float64,
one step at a time.

Nothing here imports keras_gates or Keras. Weights come in the documented
layout, which is the Keras built-ins' (gate blocks side by side: LSTM
[i | f | c | o] with c = s~, no f without the forget gate; GRU(reset_after=
False) [z | r | h] with r = o, h = s~ and z the update gate, i = 1 - z);
each step function names the blocks explicitly, then writes the lecture's
equations;
the sequence driver follows keras.layers.RNN's documented semantics for masks
(a masked step keeps the state and repeats the previous output, or outputs
zeros with zero_output_for_mask), go_backwards (read from the end, outputs in
reading order) and initial states.
"""

from __future__ import annotations

import numpy as np


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def per_block(mask, n):
    """A dropout mask as one multiplier per gate block (block order): a list
    of n masks (Keras's implementation 1) stays, one mask serves every block."""
    if isinstance(mask, (list, tuple)):
        assert len(mask) == n, (len(mask), n)
        return list(mask)
    return [mask] * n


def lstm_step(
    x_t,
    h_tm1,
    s_tm1,
    kernel,
    recurrent_kernel,
    bias,
    forget_gate=True,
    r_mask=1.0,
    x_mask=1.0,
):
    """One LSTM step; returns h_t, s_t and the gates (for trace checks).

    r_mask: recurrent dropout mask, applied to h_{t-1} where it meets W.
    x_mask: input dropout mask, applied to x_t. Each is one multiplier or a
    list of one per gate block in the weights' order (i, (f,) c, o).
    """
    u = h_tm1.shape[-1]
    U = np.split(kernel, kernel.shape[-1] // u, axis=-1)
    W = np.split(recurrent_kernel, recurrent_kernel.shape[-1] // u, axis=-1)
    b = np.split(bias, bias.shape[-1] // u) if bias is not None else [0.0] * len(U)
    h = [h_tm1 * m for m in per_block(r_mask, len(U))]
    x = [x_t * m for m in per_block(x_mask, len(U))]
    # Keras's block order i, f, c, o; its c is the candidate s~.
    if forget_gate:
        (U_i, U_f, U_s, U_o), (W_i, W_f, W_s, W_o), (b_i, b_f, b_s, b_o) = U, W, b
        (h_i, h_f, h_s, h_o), (x_i, x_f, x_s, x_o) = h, x
    else:
        (U_i, U_s, U_o), (W_i, W_s, W_o), (b_i, b_s, b_o) = U, W, b
        (h_i, h_s, h_o), (x_i, x_s, x_o) = h, x
    o_t = sigmoid(h_o @ W_o + x_o @ U_o + b_o)
    i_t = sigmoid(h_i @ W_i + x_i @ U_i + b_i)
    s_tilde_t = np.tanh(h_s @ W_s + x_s @ U_s + b_s)
    if forget_gate:
        f_t = sigmoid(h_f @ W_f + x_f @ U_f + b_f)
        s_t = f_t * s_tm1 + i_t * s_tilde_t
    else:
        f_t = None
        s_t = s_tm1 + i_t * s_tilde_t
    h_t = o_t * np.tanh(s_t)
    gates = {"o": o_t, "i": i_t, "s_tilde": s_tilde_t, "s": s_t, "h": h_t}
    if forget_gate:
        gates["f"] = f_t
    return (h_t, s_t), gates


def gru_step(x_t, s_tm1, kernel, recurrent_kernel, bias, r_mask=1.0, x_mask=1.0):
    """One GRU step; returns s_t and the gates.

    r_mask: recurrent dropout mask, applied to s_{t-1} where it meets W (the
    carry (1 - i_t) * s_{t-1} keeps the undropped state). x_mask: input
    dropout mask. Each one multiplier or a list per block (z, r, h).
    """
    s_z, s_o, s_s = (s_tm1 * m for m in per_block(r_mask, 3))
    x_z, x_o, x_s = (x_t * m for m in per_block(x_mask, 3))
    # Keras's GRU(reset_after=False) block order z, r, h: the update gate z
    # (the lecture's i = 1 - z), the reset gate r = o, h the candidate s~.
    U_z, U_o, U_s = np.split(kernel, 3, axis=-1)
    W_z, W_o, W_s = np.split(recurrent_kernel, 3, axis=-1)
    b_z, b_o, b_s = np.split(bias, 3) if bias is not None else (0.0, 0.0, 0.0)
    o_t = sigmoid(s_o @ W_o + x_o @ U_o + b_o)
    i_t = 1.0 - sigmoid(s_z @ W_z + x_z @ U_z + b_z)
    s_tilde_t = np.tanh((o_t * s_s) @ W_s + x_s @ U_s + b_s)
    s_t = (1.0 - i_t) * s_tm1 + i_t * s_tilde_t
    return (s_t,), {"o": o_t, "i": i_t, "s_tilde": s_tilde_t, "s": s_t}


def run(
    kind,
    x,
    weights,
    mask=None,
    initial_state=None,
    go_backwards=False,
    zero_output_for_mask=False,
    forget_gate=True,
    recurrent_mask=1.0,
    input_mask=1.0,
):
    """Run a whole sequence like keras.layers.RNN.

    Args:
        kind: "lstm" or "gru".
        x: (batch, time, features).
        weights: [kernel, recurrent_kernel, bias] or [kernel, recurrent_kernel].
        mask: optional (batch, time) booleans.
        initial_state: optional list of (batch, units) arrays.
        recurrent_mask: optional (batch, units) recurrent dropout mask, or a
            list of one per gate block (block order).
        input_mask: optional (batch, features) input dropout mask, or a list
            of one per gate block.

    Returns:
        (outputs (batch, time, units), last_output (batch, units),
         final_states list, gates dict of (batch, time, units) arrays)
    """
    x = np.asarray(x, np.float64)
    kernel, recurrent_kernel = (np.asarray(w, np.float64) for w in weights[:2])
    bias = np.asarray(weights[2], np.float64) if len(weights) > 2 else None
    batch, steps, _ = x.shape
    units = recurrent_kernel.shape[0]
    n_states = 2 if kind == "lstm" else 1
    if initial_state is None:
        states = [np.zeros((batch, units)) for _ in range(n_states)]
    else:
        states = [np.asarray(s, np.float64) for s in initial_state]
    mask = np.ones((batch, steps), bool) if mask is None else np.asarray(mask, bool)
    order = range(steps - 1, -1, -1) if go_backwards else range(steps)

    prev_output = np.zeros((batch, units))
    outputs, traces = [], {}
    for t in order:
        if kind == "lstm":
            new_states, gates = lstm_step(
                x[:, t],
                *states,
                kernel,
                recurrent_kernel,
                bias,
                forget_gate,
                recurrent_mask,
                input_mask,
            )
            output = new_states[0]
        else:
            new_states, gates = gru_step(
                x[:, t],
                *states,
                kernel,
                recurrent_kernel,
                bias,
                recurrent_mask,
                input_mask,
            )
            output = new_states[0]
        keep = mask[:, t][:, None]
        states = [np.where(keep, new, old) for new, old in zip(new_states, states)]
        shown = np.zeros_like(output) if zero_output_for_mask else prev_output
        output = np.where(keep, output, shown)
        prev_output = output
        outputs.append(output)
        for name, value in gates.items():
            traces.setdefault(name, []).append(value)
    outputs = np.stack(outputs, axis=1)
    gates = {name: np.stack(v, axis=1) for name, v in traces.items()}
    return outputs, prev_output, states, gates
