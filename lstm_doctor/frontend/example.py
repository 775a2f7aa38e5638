"""The bundled example's text path: sample tweets and a Tweet2Vec-format encoder file.

- ``SAMPLE_TWEETS``: a few dozen tweets written for this project (mentions,
  URLs, emoticons, hashtags, punctuation, non-ASCII characters, one empty line
  and one long line). ``examples/tweet2vec_like/tweets.txt`` is
  ``write_tweets`` of them (a test checks that the two agree).
- ``write_encoding(folder)``: ``encoding_tweet2vec_like_3.npy``, the 25-array
  file of the case study (docs/case-study.md): a seeded random conv stack in the documented shapes
  (256×75×7, 256×256×7, 256×256×3, 256×256×3), then the bundled *broken*
  encoder's LSTM (``examples/tweet2vec_like/broken``, H = 64, D = 10) as the
  17 Tweet2Vec arrays. It is a plain pickle of the list (which the importer
  reads like joblib's format), about 4 MB, so it is generated into a cache
  folder (``$XDG_CACHE_HOME/lstm_doctor/tweet2vec_like_text``) rather than
  committed. The conv weights are He-scaled normals and the last layer is
  scaled so that the features are small (values 0 to ~0.07, most of them exact
  zeros), as in docs/case-study.md.
- ``text_example()``: (encoding file, tweets file), generated once per cache.

``lstm-doctor diagnose <encoding> --inputs tweets.txt --preset tweet2vec`` is
then the path a user of docs/case-study.md takes: text → features (the conv output,
(B, 256, 10)) → the broken encoder read in its declared layout btd.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from lstm_doctor.example import example_folder
from lstm_doctor.frontend.tweet2vec import FILTERS, N_CHANNELS, WIDTHS
from lstm_doctor.load import load_model

SEED = 2016 + 9  # Tweet2Vec's year, issue 9
LAST_LAYER_SCALE = 0.12
ENCODING_NAME = "encoding_tweet2vec_like_3.npy"
STAMP = "v2"  # bump when the generated encoding changes

SAMPLE_TWEETS = (
    "Just landed in Lisbon, the light here is unreal :) #travel",
    "@maria_k thanks for the tip!! the pastel de nata place was perfect",
    "Why does my build only fail on Fridays?? #devlife",
    "can't believe it's already December... where did the year go :(",
    "New blog post: five things I learned porting a CNN to NumPy https://example.org/blog/cnn-numpy",
    "RT @weatherbot: heavy rain expected tonight, stay dry everyone",
    "I'm not crying, you're crying :'( #finale",
    "Coffee #3 of the day. Don't judge me ;)",
    "",
    "@sam @alex meeting moved to 3pm, room 4B. bring the slides!",
    "lol that cat video xD http://t.co/aBcD123",
    "Hot take: tabs > spaces. Fight me. #coding",
    "We won 2-1!!! What a match :D #football",
    "Traffic on the bridge again -_- 45 minutes and counting",
    "Reading 'The Left Hand of Darkness' for the third time, still amazing <3",
    "Does anyone know a good vegan place near the station? Asking for a friend",
    "Server down. Again. @support please fix :/",
    "Happy birthday @grandma_rose!!! 90 years young 🎉🎂",
    "it's 2am and I'm debugging a race condition. send help (and snacks)",
    "Café au lait and a croissant, naïve me thought Paris would be cheap",
    "Photos from the hike are up: www.example.com/hikes/ridge-trail #outdoors #nature",
    "Unpopular opinion: pineapple on pizza is fine.",
    "my phone battery: 3%... me: 40 tabs open",
    "So proud of my students today, every single one passed the exam =)",
    "The #python 3.13 release notes are a long read, but worth it",
    "Power cut in the whole neighbourhood :( candles it is",
    "@dev_team the deploy script deletes /tmp/cache?? whose idea was that",
    "Morning run: 10k in 52:30, new personal best!",
    "If you're reading this, drink some water. That's it. That's the tweet.",
    "Can't sleep. Thinking about black holes and tax forms, in that order.",
    "Spring cleaning done: 3 bags for the charity shop, 1 for the bin, 0 regrets",
    "He said \"trust me\" and then deleted the production database. Classic.",
    "Watching the sunset from the pier #nofilter :-)",
    "¿Dónde está la biblioteca? — my entire Spanish vocabulary",
    "Anyone else's train cancelled?? @railway_info no announcement at all >:(",
    "A long thread on why our encoder turned every tweet into the same vector: the weights "
    "were drawn with a positive mean, the hidden state used a sigmoid where it needed tanh, the "
    "inputs were a thousand times smaller than the recurrent term, and the conv output was read "
    "with its channels as time. Each one alone looks harmless; together they made every gate "
    "saturate after one step. #machinelearning #debugging 1/n",
    "ok",
    "Groceries: eggs, milk, bread, more coffee. Mostly coffee.",
    "Finally fixed the bug!!! It was a missing minus sign -- of course it was",
    "Good night, world :) see you tomorrow",
)


def write_tweets(path: str | Path) -> Path:
    """Write ``SAMPLE_TWEETS`` one per line (UTF-8, final newline)."""
    path = Path(path)
    path.write_text("\n".join(SAMPLE_TWEETS) + "\n", encoding="utf-8")
    return path


def conv_arrays(seed: int = SEED) -> list[np.ndarray]:
    """The 8 conv arrays W1, b1, ..., W4, b4 (float32), seeded."""
    rng = np.random.default_rng(seed)
    arrays = []
    channels = N_CHANNELS
    for k, width in enumerate(WIDTHS):
        fan_in = channels * width
        W = rng.normal(0.0, np.sqrt(2.0 / fan_in), (FILTERS, channels, width))
        b = rng.normal(-0.05, 0.05, FILTERS)
        if k == len(WIDTHS) - 1:
            W, b = W * LAST_LAYER_SCALE, b * LAST_LAYER_SCALE
        arrays += [W.astype(np.float32), b.astype(np.float32)]
        channels = FILTERS
    return arrays


def lstm_arrays(broken_folder: Path) -> list[np.ndarray]:
    """The broken example encoder as the 17 Tweet2Vec arrays, in their order."""
    params = load_model(broken_folder).layers[0].forward
    H = params.H
    W, U, b, peep = params.W, params.U, params.b, params.peephole
    arrays = [
        np.asarray(params.h0, np.float32).reshape(1, H),
        np.asarray(params.c0, np.float32).reshape(1, H),
        peep[0],
        peep[1],
        peep[2],
    ]
    for k in range(4):  # input, forget, cell, output: the blocks i, f, g, o
        block = slice(k * H, (k + 1) * H)
        arrays += [W[:, block], U[:, block], b[block]]
    return [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]


def write_encoding(folder: str | Path, broken_folder: str | Path | None = None) -> Path:
    """Write ``encoding_tweet2vec_like_3.npy`` (25 arrays) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    broken = Path(broken_folder) if broken_folder else example_folder() / "broken"
    arrays = conv_arrays() + lstm_arrays(broken)
    target = folder / ENCODING_NAME
    tmp = folder / f".{ENCODING_NAME}.tmp"
    with open(tmp, "wb") as fh:
        pickle.dump(arrays, fh, protocol=4)
    os.replace(tmp, target)
    (folder / "STAMP").write_text(STAMP + "\n", encoding="utf-8")
    return target


def cache_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lstm_doctor" / "tweet2vec_like_text"


def text_example(folder: str | Path | None = None) -> tuple[Path, Path]:
    """(encoding file, tweets file) for the demo's text path, generated once.

    The tweets are the checkout's ``examples/tweet2vec_like/tweets.txt`` when
    it exists, else a copy written beside the encoding.
    """
    folder = Path(folder) if folder else cache_folder()
    encoding = folder / ENCODING_NAME
    stamp = folder / "STAMP"
    if not (encoding.is_file() and stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == STAMP):
        write_encoding(folder)
    tweets = example_folder() / "tweets.txt"
    if not tweets.is_file():
        tweets = folder / "tweets.txt"
        if not tweets.is_file():
            write_tweets(tweets)
    return encoding, tweets
