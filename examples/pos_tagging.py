"""
Title: Part-of-speech tagging with a bidirectional gated LSTM
Description: Label every word of a sentence with its part of speech (Penn
Treebank tags) using Bidirectional(keras_gates.LSTM(return_sequences=True)).
"""

# %% [markdown]
# ## Introduction
#
# Sequence labelling gives one output per input step: here, the part of speech
# of each word ("The/DT lead/JJ actor/NN delivered/VBD ..."). A word's tag
# depends on what follows it as much as on what precedes it ("lead" is JJ in
# "the lead actor", VB in "they lead"), so the tagger is bidirectional: one
# LSTM reads left to right, a second one right to left, and at each step t
# their outputs (h_t of each) are concatenated and fed to a softmax over the
# tags.
#
# Data: 8,000 sentences of the Open American National Corpus tagged with Penn
# Treebank tags (a sample shipped in `examples/data/`, the same online and
# offline). We measure per-token accuracy on held-out sentences and compare it
# with a baseline that gives each word its most frequent training tag.
# `KERAS_GATES_TINY=1` runs a few steps on a small part of the data.

# %% [markdown]
# ## Setup

# %%
import collections
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import corpora
import keras
import numpy as np
import tensorflow as tf

import keras_gates
from keras_gates.serving.verify import run_signatures

keras.utils.set_random_seed(42)
TINY = corpora.TINY
OUT = corpora.OUTPUTS
MAX_WORDS = 60  # longer sentences are cut

# %% [markdown]
# ## Load the tagged sentences

# %%
sentences = corpora.tagged_sentences(limit=1500 if TINY else None)
order = np.random.default_rng(0).permutation(len(sentences))
cut = int(0.85 * len(sentences))
train = [sentences[i] for i in order[:cut]]
test = [sentences[i] for i in order[cut:]]
print(f"{len(train)} training and {len(test)} test sentences")
print(" ".join(f"{w}/{t}" for w, t in zip(*train[0])))

TAGS = sorted({tag for _, tags in sentences for tag in tags})
TAG_ID = {tag: index + 1 for index, tag in enumerate(TAGS)}  # 0 is padding
print(f"{len(TAGS)} tags: {' '.join(TAGS)}")


def encode(split):
    """Sentences as one whitespace-joined string each, tags as padded ids."""
    texts = tf.constant([" ".join(words[:MAX_WORDS]) for words, _ in split])
    labels = np.zeros((len(split), MAX_WORDS), "int32")
    for row, (_, tags) in enumerate(split):
        labels[row, : len(tags[:MAX_WORDS])] = [TAG_ID[t] for t in tags[:MAX_WORDS]]
    return texts, labels


train_texts, train_labels = encode(train)
test_texts, test_labels = encode(test)

# %% [markdown]
# ## Build the model
#
# The model reads a whitespace-tokenized sentence. `TextVectorization` keeps
# punctuation (it is tagged too) and lower-cases; `mask_zero=True` makes both
# LSTMs and the loss ignore the padding (the backward LSTM starts at the last
# real word, not at the padding). `keras.layers.Bidirectional` makes the
# backward copy of the keras_gates LSTM (`go_backwards=True`) and concatenates
# the two outputs at every step.

# %%
vectorize = keras.layers.TextVectorization(
    max_tokens=20000,
    standardize="lower",
    split="whitespace",
    output_sequence_length=MAX_WORDS,
)
vectorize.adapt(train_texts)

model = keras.Sequential(
    [
        keras.Input(shape=(1,), dtype="string", name="sentence"),
        vectorize,
        keras.layers.Embedding(vectorize.vocabulary_size(), 96, mask_zero=True),
        keras.layers.Bidirectional(
            keras_gates.LSTM(64, return_sequences=True), name="bi_lstm"
        ),
        keras.layers.Dense(len(TAGS) + 1, activation="softmax", name="tag"),
    ],
    name="pos_tagger",
)
model.compile(
    optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
)
model.summary()

# %% [markdown]
# ## Train

# %%
model.fit(
    train_texts[:, None],
    train_labels,
    validation_split=0.1,
    epochs=3 if TINY else 12,
    batch_size=32,
    callbacks=[keras.callbacks.EarlyStopping(patience=2, restore_best_weights=True)],
)

# %% [markdown]
# ## Per-token accuracy on held-out sentences
#
# Counted over real words only (not padding), against the most-frequent-tag
# baseline, which tags unseen words NN.

# %%
predicted = model.predict(test_texts[:, None], verbose=0).argmax(axis=-1)
words_present = test_labels > 0
accuracy = float((predicted == test_labels)[words_present].mean())

counts = collections.defaultdict(collections.Counter)
for words, tags in train:
    for word, tag in zip(words, tags):
        counts[word.lower()][tag] += 1
baseline_hits = [
    (counts[w.lower()].most_common(1)[0][0] if counts[w.lower()] else "NN") == t
    for words, tags in test
    for w, t in zip(words[:MAX_WORDS], tags[:MAX_WORDS])
]
baseline = float(np.mean(baseline_hits))
chance = float(np.mean([t == "NN" for _, tags in test for t in tags[:MAX_WORDS]]))
print(f"per-token accuracy: {accuracy:.3f}")
print(f"most-frequent-tag baseline: {baseline:.3f}; always NN: {chance:.3f}")
assert accuracy > chance, "the tagger should beat tagging every word NN"

# %% [markdown]
# ## Tag a new sentence

# %%
SENTENCE = "The lead actor delivered an amazing performance ."
WORDS = SENTENCE.split()


def show(tag_ids):
    return " ".join(f"{w}/{TAGS[i - 1] if i else '?'}" for w, i in zip(WORDS, tag_ids))


ids = model.predict(tf.constant([[SENTENCE]]), verbose=0)[0].argmax(axis=-1)
print(show(ids))

# %% [markdown]
# ## Save and export for TF Serving
#
# The export takes raw sentences (`text`, the TextVectorization is inside the
# graph) and returns the tag probabilities (`outputs`). A bidirectional model
# is exported whole: its `serving_default` signature is written, while the
# `step` (streaming) and `gates` signatures, which follow one forward cell step
# by step, are not; the export's `keras_gates.json` says so and why. Then the
# export runs in TF Serving's C++ loader (a process without TensorFlow's Python
# package), and must tag the sentence as Keras does.

# %%
OUT.mkdir(parents=True, exist_ok=True)
model.save(OUT / "pos_tagger.keras")
path = keras_gates.export_for_serving(model, corpora.SAVED_MODELS, "pos_tagger")
metadata = json.loads((path / "assets.extra" / "keras_gates.json").read_text())
print(f"exported {path}")
print(f"signatures: {', '.join(metadata['signatures'])}")
print(f"not written: {', '.join(metadata['omitted_signatures'])} (see the log line)")

(answer,) = run_signatures(path, [("serving_default", {"text": np.array([SENTENCE])})])
served_ids = answer["outputs"][0].argmax(axis=-1)[: len(WORDS)]
print(f"served by the C++ loader: {show(served_ids)}")
assert (served_ids == ids[: len(WORDS)]).all(), "the served tags should equal Keras's"
