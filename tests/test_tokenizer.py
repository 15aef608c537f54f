"""The tokenizer: exact byte round trips, raw token bytes for bits-per-byte, a safe file format."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from autoresearch.data.tokenizer import FORMAT, Tokenizer
from autoresearch.errors import DataError

TEXTS = [
    "Hello, world! It's 2024: 12345678 apples.",
    "Grüße aus München — naïve café, œuvre, Ærø",
    "日本語のテキストと中文文本，한국어 문장도。",
    "Привет, мир! Ελληνικά. עברית. مرحبا بالعالم. हिन्दी",
    "emoji: 🎉🐍 family 👩‍👩‍👧‍👦 flag 🏳️‍🌈 skin 👍🏽 keycap 1️⃣",
    "def f(x):\n\treturn {'a': x ** 2}  # comment\r\n\r\nclass A(B): pass\n",
    "odd   whitespace\t\t\n\n\n \u00a0nbsp\u2003em-space\u200bzero-width\u3000ideographic \x0c\x0b\r",
    "combining e\u0301 vs \u00e9, ligature \ufb01, replacement \ufffd, max \U0010ffff",
    "",
    " ",
    "\n",
]


@pytest.fixture(scope="module")
def code_tokenizer(tiny_prepared: Path) -> Tokenizer:
    """The tiny preset's 2048-token BPE, learned from Python sources only."""
    return Tokenizer.load(tiny_prepared / "tokenizer.json")


@pytest.fixture(scope="module")
def multilingual_tokenizer() -> Tokenizer:
    """A small BPE learned from multilingual text, so some merges are inside multi-byte characters."""
    return Tokenizer.train([t * 20 for t in TEXTS], vocab_size=400)


@pytest.mark.parametrize("which", ["code_tokenizer", "multilingual_tokenizer"])
def test_encode_decode_round_trips_every_text_exactly(which: str, request: pytest.FixtureRequest) -> None:
    tok: Tokenizer = request.getfixturevalue(which)
    for text in [*TEXTS, "".join(TEXTS)]:
        ids = tok.encode(text)
        assert tok.decode_bytes(ids) == text.encode("utf-8")
        assert tok.decode(ids) == text
        assert tok.bos_id not in ids


@pytest.mark.parametrize("which", ["code_tokenizer", "multilingual_tokenizer"])
def test_token_raw_bytes_concatenate_to_the_utf8_of_the_text(which: str, request: pytest.FixtureRequest) -> None:
    tok: Tokenizer = request.getfixturevalue(which)
    lengths = tok.token_bytes()
    for text in TEXTS:
        ids = tok.encode(text)
        assert b"".join(tok.raw_bytes(i) for i in ids) == text.encode("utf-8")
        assert int(lengths[ids].sum()) == len(text.encode("utf-8"))  # what bits-per-byte divides by


def test_batch_encoding_gives_the_same_ids(code_tokenizer: Tokenizer) -> None:
    assert code_tokenizer.encode_batch(TEXTS, num_threads=2) == [code_tokenizer.encode(t) for t in TEXTS]


def test_partial_utf8_tokens_exist_and_count_their_raw_bytes_not_u_fffd(code_tokenizer: Tokenizer) -> None:
    text = TEXTS[4]  # emoji: never seen in Python sources, so they are spelled byte by byte
    ids = code_tokenizer.encode(text)
    partial = []
    for i in ids:
        try:
            code_tokenizer.raw_bytes(i).decode("utf-8")
        except UnicodeDecodeError:
            partial.append(i)
    assert partial, "expected tokens that are pieces of a multi-byte character"
    lengths = code_tokenizer.token_bytes()
    for i in partial:
        raw = code_tokenizer.raw_bytes(i)
        assert "\ufffd" in code_tokenizer.decode([i])  # decoding it alone loses the bytes...
        assert lengths[i] == len(raw)  # ...but the byte count is the raw one
    # Counting bytes by decoding each token to text (as the reference did) gives the wrong total.
    naive = sum(len(code_tokenizer.decode([i]).encode("utf-8")) for i in ids)
    assert naive != len(text.encode("utf-8")) == int(lengths[ids].sum())


def test_bos_is_id_zero_with_no_bytes_and_its_text_is_ordinary_text(code_tokenizer: Tokenizer) -> None:
    assert code_tokenizer.bos_id == 0
    assert code_tokenizer.raw_bytes(0) == b""
    assert code_tokenizer.token_bytes()[0] == 0
    assert (code_tokenizer.token_bytes()[1:] > 0).all()
    text = "a document may contain <|bos|> literally"
    ids = code_tokenizer.encode(text)
    assert 0 not in ids and code_tokenizer.decode(ids) == text


def test_training_gives_the_requested_vocabulary_with_all_single_bytes(multilingual_tokenizer: Tokenizer) -> None:
    assert multilingual_tokenizer.vocab_size == 400
    vocab = {multilingual_tokenizer.raw_bytes(i) for i in range(multilingual_tokenizer.vocab_size)}
    assert len(vocab) == 400
    assert {bytes([b]) for b in range(256)} <= vocab  # any byte string can be encoded


def test_training_is_deterministic() -> None:
    texts = [t * 5 for t in TEXTS]
    assert Tokenizer.train(texts, 350).digest() == Tokenizer.train(texts, 350).digest()


def test_save_then_load_gives_the_same_tokenizer(multilingual_tokenizer: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    multilingual_tokenizer.save(path)
    data = json.loads(path.read_text())  # plain JSON, never a pickle
    assert data["format"] == FORMAT and len(data["tokens"]) == 400
    loaded = Tokenizer.load(path)
    assert loaded.digest() == multilingual_tokenizer.digest()
    assert (loaded.token_bytes() == multilingual_tokenizer.token_bytes()).all()
    for text in TEXTS:
        assert loaded.encode(text) == multilingual_tokenizer.encode(text)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def _tokens_json(tokens: list[bytes], fmt: str = FORMAT) -> str:
    return json.dumps({"format": fmt, "tokens": [base64.b64encode(t).decode() for t in tokens]})


SINGLE_BYTES = [bytes([b]) for b in range(256)]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"\x80\x03}q\x00(X\x05\x00\x00\x00", id="pickle-bytes"),
        pytest.param(b"\xff\xfe\x00\x01 binary", id="binary"),
        pytest.param(b"", id="empty"),
        pytest.param(b"{not json", id="broken-json"),
        pytest.param(b"[1, 2, 3]", id="json-list"),
        pytest.param(b"null", id="json-null"),
        pytest.param(b'{"version": "1.0", "model": {"type": "BPE", "vocab": {}}}', id="hf-tokenizer-json"),
        pytest.param(_tokens_json([b"", *SINGLE_BYTES], fmt="autoresearch-bpe-0").encode(), id="other-format"),
        pytest.param(b'{"format": "autoresearch-bpe-1"}', id="no-tokens"),
        pytest.param(b'{"format": "autoresearch-bpe-1", "tokens": ["%%%"]}', id="bad-base64"),
        pytest.param(b'{"format": "autoresearch-bpe-1", "tokens": [1, 2]}', id="tokens-not-strings"),
        pytest.param(_tokens_json([b"", b"a", b"b"]).encode(), id="missing-single-bytes"),
        pytest.param(_tokens_json([b"x", *SINGLE_BYTES]).encode(), id="no-bos"),
        pytest.param(_tokens_json([b"", *SINGLE_BYTES, b"ab", b"ab"]).encode(), id="duplicate-token"),
    ],
)
def test_garbage_or_wrong_format_tokenizer_file_is_a_data_error(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(DataError):
        Tokenizer.load(path)


def test_missing_tokenizer_file_is_a_data_error_that_says_to_prepare(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read tokenizer") as err:
        Tokenizer.load(tmp_path / "tokenizer.json")
    assert "autoresearch prepare" in str(err.value)
