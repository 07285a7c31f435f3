"""
Title: Movie review sentiment with a gated LSTM you can look inside
Description: Classify movie reviews as positive or negative with keras_gates.LSTM,
then watch its input, forget and output gates read the seed's review word by word.
"""

# %% [markdown]
# ## Introduction
#
# A review is a sequence of words; its sentiment is one bit. An LSTM reads the
# words in order, and its gates decide what to take in (input gate `i_t`), what
# to keep (forget gate `f_t`) and what to show (output gate `o_t`). Here we
# train `keras_gates.LSTM`, a drop-in for `keras.layers.LSTM` whose gates can be
# traced, on real reviews, and look at the gates on one review.
#
# Data: online (Colab), the IMDB reviews of `tfds.load("imdb_reviews")`;
# offline, 10,604 Rotten Tomatoes review sentences rated by people
# (VADER's movie snippets, shipped in `examples/data/`), through a
# tensorflow-datasets builder, so the code is the same.
# `KERAS_GATES_TINY=1` runs a few steps on a small part of the data.

# %% [markdown]
# ## Setup

# %%
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import corpora
import keras
import numpy as np
import tensorflow as tf

import keras_gates
from keras_gates.plots import plot_gate_heatmap

keras.utils.set_random_seed(42)
TINY = corpora.TINY
OUT = corpora.OUTPUTS

# %% [markdown]
# ## Load the reviews

# %%
(train_texts, train_labels), (test_texts, test_labels), source = corpora.movie_reviews(
    max_train=3000 if TINY else None, max_test=600 if TINY else None
)
print(f"{source}: {len(train_texts)} training and {len(test_texts)} test reviews")
print(f"positive share in training: {train_labels.mean():.2f}")
for text, label in zip(train_texts[:3].numpy(), train_labels[:3]):
    print(f"  [{'pos' if label else 'neg'}] {text.decode()[:100]}")

# %% [markdown]
# ## Build the model
#
# The model takes raw strings: `TextVectorization` turns them into word ids
# inside the model, so the exported SavedModel serves text directly.
# `mask_zero=True` makes the LSTM skip the padding.

# %%
MAX_TOKENS = 20000
SEQUENCE_LENGTH = 200 if source == "imdb_reviews" else 48
vectorize = keras.layers.TextVectorization(
    max_tokens=MAX_TOKENS, output_sequence_length=SEQUENCE_LENGTH
)
vectorize.adapt(train_texts)

model = keras.Sequential(
    [
        keras.Input(shape=(1,), dtype="string", name="review"),
        vectorize,
        keras.layers.Embedding(vectorize.vocabulary_size(), 64, mask_zero=True),
        keras_gates.LSTM(64, name="lstm"),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(1, activation="sigmoid", name="positive"),
    ],
    name="sentiment",
)
model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
model.summary()

# %% [markdown]
# ## Train
#
# 10% of the training reviews are held out for validation; training stops when
# the validation loss stops improving. `keras_gates.GateMonitor` writes the
# LSTM's gates on 16 test reviews to TensorBoard after every epoch: watch them
# with `tensorboard --logdir example_outputs/tensorboard`.

# %%
probe = test_texts[:16, None]  # (16, 1) strings, as the model takes them
vocabulary = vectorize.get_vocabulary()
probe_words = [vocabulary[i] for i in vectorize(probe[0]).numpy()[0]]  # "" = padding
history = model.fit(
    train_texts[:, None],
    train_labels,
    validation_split=0.1,
    epochs=2 if TINY else 8,
    batch_size=64,
    callbacks=[
        keras.callbacks.EarlyStopping(patience=2, restore_best_weights=True),
        keras_gates.GateMonitor(probe, OUT / "tensorboard", tokens=probe_words),
    ],
)

# %% [markdown]
# ## Evaluate on held-out reviews

# %%
loss, accuracy = model.evaluate(test_texts[:, None], test_labels, verbose=0)
majority = max(test_labels.mean(), 1 - test_labels.mean())
print(f"test accuracy: {accuracy:.3f} (majority class: {majority:.3f})")
assert accuracy > majority, "the model should beat always guessing the majority"

# %% [markdown]
# ## The seed's review, and what the gates did
#
# `keras_gates.trace_gates` returns every gate at every step, (batch, time,
# units). Below: the prediction, then `keras_gates.plots.plot_gate_heatmap`:
# one panel per gate, one row per unit, one column per word (0 closed, 1 open).

# %%
REVIEW = (
    "The first half of the movie is dry but the second half really picked up "
    "the pace. The lead actor delivered an amazing performance."
)
review = tf.constant([[REVIEW]])  # (batch=1, 1) string, as the model takes it
probability = float(model.predict(review, verbose=0)[0, 0])
print(f"P(positive) = {probability:.3f}: {REVIEW}")

vocabulary = vectorize.get_vocabulary()
words = [str(vocabulary[i]) for i in vectorize([REVIEW]).numpy()[0] if i]
trace = keras_gates.trace_gates(model, review, layer="lstm")
# (1, time, units) per gate; keep the words, drop the padding after them.
trace = {name: values[:, : len(words)] for name, values in trace.items()}
for gate in ("i", "f", "o"):
    print(f"mean {gate}_t over units: {trace[gate][0].mean():.2f}")
opened = trace["i"][0].mean(axis=-1)
print("input gate widest at:", [words[t] for t in np.argsort(-opened)[:5]])

# %%
OUT.mkdir(parents=True, exist_ok=True)
figure = plot_gate_heatmap(
    trace,
    tokens=words,
    gates=["i", "f", "o"],
    title=f"P(positive) = {probability:.2f}",
    path=OUT / "sentiment_gates.png",
)
if "ipykernel" in sys.modules:  # a notebook shows the picture
    from IPython.display import Image, display

    display(Image(filename=OUT / "sentiment_gates.png"))

# %% [markdown]
# ## Save and export for TF Serving
#
# The `.keras` file is what `fine_tune.py` starts from. The SavedModel under
# `saved_models/sentiment/<version>/` is what TF Serving serves
# (`POST /v1/models/sentiment:predict` with `{"instances": [["a review"]]}`).

# %%
OUT.mkdir(parents=True, exist_ok=True)
model.save(OUT / "sentiment.keras")
path = keras_gates.export_for_serving(model, corpora.SAVED_MODELS, "sentiment")
print(f"exported {path}")
