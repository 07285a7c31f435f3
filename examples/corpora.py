"""Real text corpora for the keras_gates examples, the same code online and offline.

Each loader returns plain Python/NumPy data. Which source it reads:

| loader | online (Colab) | offline (default here and in CI) |
|---|---|---|
| `movie_reviews` | `tfds.load("imdb_reviews")` | `movie_review_snippets` (*) |
| `product_reviews` | VADER's Amazon snippets in `data/` | the same |
| `sentiment_sentences` | IMDB (train, validation, test) | all four VADER sets (**) |
| `vader_lexicon`, `stop_words` | shipped word lists | the same |
| `tagged_sentences` | the shipped OANC sample | the same |
| `surnames` | `names-dataset` (PyPI) when installed | its sample shipped in `data/` |
| `fortune_text` | Debian `fortunes` when installed | shipped review snippets |

(*) a tensorflow-datasets builder over VADER's 10,604 rated Rotten Tomatoes
snippets shipped in `data/`, loaded like any tfds data set.
(**) VADER's human-rated movie, product, news and tweet sentences, split into
train / validation / test per domain (the movie and product test sets are
`movie_reviews`' and `product_reviews`' own).

`KERAS_GATES_DATA=online|offline` picks the source; by default it is online in
Colab only. Nothing downloads in offline mode. Sources and licenses:
`data/SOURCES.md`.
"""

from __future__ import annotations

import functools
import gzip
import os
import pathlib
import sys

import numpy as np

DATA = pathlib.Path(__file__).resolve().parent / "data"
TINY = os.environ.get("KERAS_GATES_TINY", "") not in ("", "0")
# Where the examples write: the repository's `saved_models/` (the TF Serving
# base path that README's docker command serves) and `example_outputs/`
# (.keras files, pictures, prepared tfds data), whatever the current folder.
# KERAS_GATES_WORKDIR moves both (the tests use a temporary folder).
WORKDIR = pathlib.Path(
    os.environ.get(
        "KERAS_GATES_WORKDIR", pathlib.Path(__file__).resolve().parent.parent
    )
)
SAVED_MODELS = WORKDIR / "saved_models"
OUTPUTS = WORKDIR / "example_outputs"
# Surname origins: 16 countries whose names differ in spelling habits.
NAME_COUNTRIES = [
    "BR", "DE", "FI", "FR", "GH", "GR", "HU", "IN",
    "IR", "IT", "LT", "NL", "PL", "SE", "TR", "ZA",
]  # fmt: skip
FORTUNE_DIR = pathlib.Path("/usr/share/games/fortunes")


def online() -> bool:
    """Whether loaders may download (KERAS_GATES_DATA, else: running in Colab)."""
    choice = os.environ.get("KERAS_GATES_DATA", "").lower()
    if choice in ("online", "offline"):
        return choice == "online"
    return "google.colab" in sys.modules


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ## Movie reviews (binary sentiment)


def _snippet_rows(stem: str = "movie_review_snippets") -> list[tuple[float, str]]:
    with gzip.open(DATA / f"{stem}.tsv.gz", "rt", encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t", 1) for line in f if line.strip()]
    return [(float(rating), text) for rating, text in rows]


@functools.cache
def _snippet_builder():
    """A tensorflow-datasets builder over the shipped snippets, so the offline
    path goes through `tfds.load` exactly like `imdb_reviews` does.

    Defined once per process: tfds registers a builder class by name when it is
    defined, and refuses a second class of the same name."""
    import tensorflow_datasets as tfds

    class MovieReviewSnippets(tfds.core.GeneratorBasedBuilder):
        """Rotten Tomatoes snippets rated by 20 people each (Hutto & Gilbert 2014);
        label 1 when the mean rating is positive. Near-neutral ones dropped."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "text": tfds.features.Text(),
                        "label": tfds.features.ClassLabel(names=["neg", "pos"]),
                    }
                ),
                supervised_keys=("text", "label"),
            )

        def _split_generators(self, dl_manager):
            rows = [(r, t) for r, t in _snippet_rows() if abs(r) >= 0.5]
            order = _rng(0).permutation(len(rows))
            cut = int(0.8 * len(rows))
            return {
                "train": self._generate_examples([rows[i] for i in order[:cut]]),
                "test": self._generate_examples([rows[i] for i in order[cut:]]),
            }

        def _generate_examples(self, rows):
            for key, (rating, text) in enumerate(rows):
                yield key, {"text": text, "label": int(rating > 0)}

    return MovieReviewSnippets


def movie_reviews(max_train: int | None = None, max_test: int | None = None):
    """((train_texts, train_labels), (test_texts, test_labels), source name).

    Texts are string tensors (what Keras takes for strings), labels 0/1."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    if online():
        name = "imdb_reviews"
        splits = tfds.load(name, split=["train", "test"], as_supervised=True)
    else:
        name = "movie_review_snippets"
        data_dir = OUTPUTS / "tensorflow_datasets"
        builder = _snippet_builder()(data_dir=str(data_dir))
        builder.download_and_prepare()
        splits = builder.as_dataset(split=["train", "test"], as_supervised=True)
    out = []
    for split, limit in zip(splits, (max_train, max_test)):
        texts, labels = [], []
        for text, label in tfds.as_numpy(split.take(limit or -1)):
            texts.append(text.decode("utf-8"))
            labels.append(int(label))
        out.append((tf.constant(texts), np.array(labels, "int32")))
    return out[0], out[1], name


def product_reviews(test_share: float = 0.3):
    """((train_texts, train_labels), (test_texts, test_labels)): VADER's Amazon
    product review snippets, the "new data" of the fine-tuning notebook."""
    import tensorflow as tf

    rows = [
        (r, t) for r, t in _snippet_rows("product_review_snippets") if abs(r) >= 0.5
    ]
    order = _rng(1).permutation(len(rows))
    cut = int((1 - test_share) * len(rows))
    out = []
    for part in (order[:cut], order[cut:]):
        texts = tf.constant([rows[i][1] for i in part])
        out.append((texts, np.array([int(rows[i][0] > 0) for i in part], "int32")))
    return out[0], out[1]


# The four sets of VADER's human-rated sentences (Hutto & Gilbert 2014), by domain.
SENTIMENT_DOMAINS = {
    "movie": "movie_review_snippets",
    "product": "product_review_snippets",
    "news": "news_snippets",
    "tweet": "tweet_snippets",
}


def _rated_split(stem: str, seed: int, test_share: float):
    """(train rows, test rows) of a snippet file: |mean rating| >= 0.5 kept,
    label 1 when positive."""
    rows = [(int(r > 0), t) for r, t in _snippet_rows(stem) if abs(r) >= 0.5]
    order = _rng(seed).permutation(len(rows))
    cut = int((1 - test_share) * len(rows))
    return [rows[i] for i in order[:cut]], [rows[i] for i in order[cut:]]


def sentiment_sentences(
    validation_share: float = 0.1, max_per_domain: tuple[int, int, int] | None = None
):
    """({"train" | "validation" | "test": (texts, labels, domains)}, source name).

    Offline, every human-rated sentence set VADER ships (movie, product, news,
    tweet; near-neutral ones, |mean rating| < 0.5, dropped). Each domain is
    split on its own: the movie test set is `movie_reviews()`'s (20%), the
    product test set `product_reviews()`'s (30%), news and tweets hold out 20%;
    `validation_share` of each domain's training part is the validation set.
    Online, IMDB's train (less the validation share) and test sets.
    `max_per_domain` = (train, validation, test) caps per domain (tiny runs).

    Texts are string tensors, labels 0/1 int32, domains a NumPy array of names.
    """
    import tensorflow as tf

    (movie_train, movie_train_labels), (movie_test, movie_test_labels), name = (
        movie_reviews()
    )
    parts = {  # domain -> (training rows, test rows), rows (label, text)
        "movie": tuple(
            list(zip(labels.tolist(), (t.decode() for t in texts.numpy())))
            for texts, labels in (
                (movie_train, movie_train_labels),
                (movie_test, movie_test_labels),
            )
        )
    }
    if name != "imdb_reviews":
        (p_train, p_train_labels), (p_test, p_test_labels) = product_reviews()
        parts["product"] = tuple(
            list(zip(labels.tolist(), (t.decode() for t in texts.numpy())))
            for texts, labels in ((p_train, p_train_labels), (p_test, p_test_labels))
        )
        for seed, domain in enumerate(("news", "tweet"), start=2):
            parts[domain] = _rated_split(SENTIMENT_DOMAINS[domain], seed, 0.2)
        name = "VADER human-rated sentences (movie, product, news, tweet)"
    splits = {"train": [], "validation": [], "test": []}
    for index, (domain, (train_rows, test_rows)) in enumerate(parts.items()):
        order = _rng(10 + index).permutation(len(train_rows))
        cut = int(round(validation_share * len(train_rows)))
        chosen = {
            "validation": [train_rows[i] for i in order[:cut]],
            "train": [train_rows[i] for i in order[cut:]],
            "test": test_rows,
        }
        for split, limit in zip(("train", "validation", "test"), max_per_domain or ()):
            chosen[split] = chosen[split][:limit]
        for split, rows in chosen.items():
            splits[split] += [(label, text, domain) for label, text in rows]
    out = {}
    for split, rows in splits.items():
        if split == "train":  # domains mixed, so every batch sees all of them
            rows = [rows[i] for i in _rng(20).permutation(len(rows))]
        out[split] = (
            tf.constant([text for _, text, _ in rows]),
            np.array([label for label, _, _ in rows], "int32"),
            np.array([domain for _, _, domain in rows]),
        )
    return out, name


def vader_lexicon() -> dict[str, float]:
    """word -> VADER's mean human valence in [-4, 4] (letters and apostrophes only)."""
    with gzip.open(DATA / "vader_lexicon.tsv.gz", "rt", encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    return {word: float(valence) for word, valence in rows}


def stop_words() -> frozenset[str]:
    """scikit-learn's English stop words (the Glasgow IR group's list)."""
    path = DATA / "stop_words_english.txt"
    return frozenset(path.read_text(encoding="utf-8").split("\n")) - {""}


# ## Part-of-speech tagged sentences


def tagged_sentences(limit: int | None = None):
    """[(tokens, tags)] from the OANC sample, Penn Treebank tags."""
    sentences = []
    with gzip.open(DATA / "oanc_tagged.txt.gz", "rt", encoding="utf-8") as f:
        for line in f:
            pairs = [item.rsplit("/", 1) for item in line.split()]
            pairs = [p for p in pairs if len(p) == 2]
            if pairs:
                sentences.append(([w for w, _ in pairs], [t for _, t in pairs]))
    return sentences[:limit]


# ## Surnames by country


def surnames(per_country: int = 1500):
    """(names, countries): each country's most frequent surnames."""
    try:
        import names_dataset  # noqa: F401
    except ImportError:
        names_dataset = None
    if names_dataset is not None and not TINY:
        sys.path.insert(0, str(DATA))
        from build_samples import names_by_country

        rows = names_by_country(NAME_COUNTRIES, per_country)
        source = "names-dataset (PyPI)"
    else:
        with gzip.open(
            DATA / "surnames_by_country.tsv.gz", "rt", encoding="utf-8"
        ) as f:
            rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
        per_country = min(per_country, 1500)
        kept = {}
        rows = [r for r in rows if kept.setdefault(r[1], []).append(r) or True]
        rows = [r for country in NAME_COUNTRIES for r in kept[country][:per_country]]
        source = "data/surnames_by_country.tsv.gz (sample of names-dataset)"
    names = np.array([name for name, _ in rows])
    countries = np.array([country for _, country in rows])
    return names, countries, source


# ## Text for character-level generation


def fortune_text(max_chars: int | None = None) -> tuple[str, str]:
    """(text, source): Debian fortunes when installed, else the review snippets."""
    files = ["fortunes", "literature", "science", "wisdom", "people", "work"]
    paths = [FORTUNE_DIR / f for f in files if (FORTUNE_DIR / f).is_file()]
    if paths:
        text = "\n".join(p.read_text(encoding="utf-8", errors="ignore") for p in paths)
        source = f"Debian fortunes: {', '.join(p.name for p in paths)}"
    else:
        text = "\n%\n".join(t for _, t in _snippet_rows())
        source = "data/movie_review_snippets.tsv.gz (fortunes not installed)"
    return text[:max_chars], source
