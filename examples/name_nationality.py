"""
Title: Where is a surname from? Character-level LSTM vs GRU
Description: Classify surnames into 16 countries from their spelling alone, with
keras_gates.LSTM and keras_gates.GRU side by side, and read the confusion matrix.
"""

# %% [markdown]
# ## Introduction
#
# "Kowalczyk", "Virtanen", "Papadopoulos": spelling says a lot about where a
# name is common. A character-level RNN reads a name letter by letter and
# classifies it. We train the same model twice, once with the LSTM (three gates
# and a cell state) and once with the GRU (two gates, fewer weights), and
# compare them on held-out names.
#
# Data: surnames from the PyPI package `names-dataset` (pip install
# names-dataset==3.3.1), each labelled with the country where it is most common;
# the 1,500 most frequent per country. Without that package (and in tiny mode)
# a sample of it shipped in `examples/data/` is used.
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
from matplotlib.figure import Figure

import keras_gates

keras.utils.set_random_seed(42)
TINY = corpora.TINY
OUT = corpora.OUTPUTS
MAX_CHARS = 16  # longer names are cut

# %% [markdown]
# ## Load the names

# %%
names, countries, source = corpora.surnames(per_country=300 if TINY else 1500)
COUNTRIES = sorted(set(countries))
labels = np.array([COUNTRIES.index(c) for c in countries], "int32")
print(f"{source}: {len(names)} names, {len(COUNTRIES)} countries")
for country in COUNTRIES[:6]:
    print(f"  {country}: {', '.join(names[countries == country][:5])}")

order = np.random.default_rng(0).permutation(len(names))
cut = int(0.85 * len(names))
train_index, test_index = order[:cut], order[cut:]

CHARS = sorted(set("".join(names[train_index]).lower()))
CHAR_ID = {c: i + 2 for i, c in enumerate(CHARS)}  # 0 padding, 1 unknown


def encode(batch):
    ids = np.zeros((len(batch), MAX_CHARS), "int32")
    for row, name in enumerate(batch):
        codes = [CHAR_ID.get(c, 1) for c in name.lower()[:MAX_CHARS]]
        ids[row, : len(codes)] = codes
    return ids


x_train, y_train = encode(names[train_index]), labels[train_index]
x_test, y_test = encode(names[test_index]), labels[test_index]
print(f"{len(x_train)} training and {len(x_test)} test names, {len(CHARS)} letters")

# %% [markdown]
# ## One model, two recurrent layers
#
# Same embedding, same size, same head; only the gated layer differs.


# %%
def make_model(recurrent_layer):
    model = keras.Sequential(
        [
            keras.Input(shape=(MAX_CHARS,), dtype="int32", name="characters"),
            keras.layers.Embedding(len(CHARS) + 2, 32, mask_zero=True),
            recurrent_layer,
            keras.layers.Dense(len(COUNTRIES), activation="softmax", name="country"),
        ],
        name=f"names_{recurrent_layer.name}",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


models = {
    "lstm": make_model(keras_gates.LSTM(128, name="lstm")),
    "gru": make_model(keras_gates.GRU(128, name="gru")),
}
models["lstm"].summary()

# %% [markdown]
# ## Train both

# %%
results = {}
for kind, model in models.items():
    print(f"--- {kind}: {model.count_params():,} weights")
    model.fit(
        x_train,
        y_train,
        validation_split=0.1,
        epochs=3 if TINY else 20,
        batch_size=64,
        callbacks=[
            keras.callbacks.EarlyStopping(patience=3, restore_best_weights=True)
        ],
    )
    results[kind] = model.evaluate(x_test, y_test, verbose=0)[1]

# %% [markdown]
# ## Compare on held-out names

# %%
chance = 1 / len(COUNTRIES)
for kind, accuracy in results.items():
    print(f"{kind}: test accuracy {accuracy:.3f} (chance {chance:.3f})")
    assert accuracy > chance, f"the {kind} should beat guessing"
best = max(results, key=results.get)
model = models[best]

for name in ["Nowak", "Virtanen", "Papadopoulos", "Okonkwo", "Hoffmann"]:
    probabilities = model.predict(encode([name]), verbose=0)[0]
    top = np.argsort(-probabilities)[:3]
    guesses = ", ".join(f"{COUNTRIES[i]} {probabilities[i]:.2f}" for i in top)
    print(f"{name:>14}: {guesses}")

# %% [markdown]
# ## The gates, letter by letter
#
# `keras_gates.GateView` colours each letter of a few names by a gate of the
# better model, with its three likeliest countries under each name: switch the
# quantity and the unit, hover a letter for every gate there. Padding after
# a name is masked (grey): the layer does not read it.

# %%
view_names = ["Nowak", "Virtanen", "Papadopoulos", "Okonkwo"]
view = keras_gates.GateView(
    model,
    encode(view_names),
    vocabulary=["", "?", *CHARS],  # id 0 padding, 1 unknown
    labels=COUNTRIES,
)
OUT.mkdir(parents=True, exist_ok=True)
print(f"gate view: {view.save(OUT / 'name_nationality_gate_view.html')}")
if "ipykernel" in sys.modules:  # a notebook shows the view inline
    from IPython.display import display

    display(view)

# %% [markdown]
# ## Confusion matrix
#
# Row: the true country; column: the predicted one; each row sums to 1. Mass
# off the diagonal shows which countries' names look alike.

# %%
predicted = model.predict(x_test, verbose=0).argmax(axis=-1)
confusion = np.zeros((len(COUNTRIES), len(COUNTRIES)))
np.add.at(confusion, (y_test, predicted), 1)
confusion /= confusion.sum(axis=1, keepdims=True).clip(min=1)
print("    " + " ".join(f"{c:>4}" for c in COUNTRIES))
for country, row in zip(COUNTRIES, confusion):
    print(f"{country:>3} " + " ".join(f"{v:4.2f}" for v in row))

figure = Figure(figsize=(7, 6), layout="constrained")  # no pyplot needed
axis = figure.subplots()
image = axis.imshow(confusion, cmap="Blues", vmin=0, vmax=1)
axis.set_xticks(range(len(COUNTRIES)), COUNTRIES, rotation=90)
axis.set_yticks(range(len(COUNTRIES)), COUNTRIES)
axis.set_xlabel("predicted")
axis.set_ylabel("true")
axis.set_title(f"{best.upper()}: test accuracy {results[best]:.2f}")
figure.colorbar(image)
OUT.mkdir(parents=True, exist_ok=True)
figure.savefig(OUT / "name_nationality_confusion.png", dpi=120)
if "ipykernel" in sys.modules:  # a notebook shows the picture
    from IPython.display import Image, display

    display(Image(filename=OUT / "name_nationality_confusion.png"))

# %% [markdown]
# ## Save and export the better model for TF Serving

# %%
OUT.mkdir(parents=True, exist_ok=True)
model.save(OUT / "name_nationality.keras")
path = keras_gates.export_for_serving(model, corpora.SAVED_MODELS, "name_nationality")
print(f"exported {path}")
