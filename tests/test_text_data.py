"""Language-model data: text sources, tokenizers, the cached token file, block_size windows, splits,
and the errors bad text gives (docs/train.md#text)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from specc.cli import app
from specc.weights.checkpoint import load_checkpoint
from specc.lang.errors import SpecError
from specc.lang.spec import load
from specc.lang.train_config import DataConfig
from specc.train.text_corpus import char_boundaries, load_corpus
from specc.train.token_windows import split_windows, unigram_baseline
from specc.train.tokenizer import ByteTokenizer, CharTokenizer, from_state, read_tokenizer_file, train_bpe
from specc.train.training import train

UNICODE = "Grüße, 世界! tab\there\n\nemoji 🐍 and a long-ish word: antidisestablishmentarianism.\n"


def corpus_of(tmp_path, text: str | bytes, tokenizer="bytes", val=0.1, test=0.1, name="corpus.txt"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    config = DataConfig(source=f"text:{name}", tokenizer=tokenizer, split={"val": val, "test": test})
    return load_corpus(config, base_dir=tmp_path, cache_root=tmp_path / ".tokens", where=None, tokenizer_where=None)


def decoded(corpus, split: str) -> str:
    start, end = corpus.bounds[split]
    return corpus.tokenizer.decode(corpus.tokens[start:end])


# --- tokenizers round-trip ----------------------------------------------------------------------------
def test_byte_tokenizer_round_trips_any_text_with_256_ids():
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(UNICODE)
    assert tokenizer.vocab_size == 256 and ids.max() < 256 and len(ids) == len(UNICODE.encode("utf-8"))
    assert tokenizer.decode(ids) == UNICODE
    assert from_state(tokenizer.state()).decode(ids) == UNICODE


def test_char_tokenizer_is_the_sorted_characters_plus_one_id_for_unseen_ones():
    tokenizer = CharTokenizer(UNICODE)
    assert tokenizer.characters == "".join(sorted(set(UNICODE)))
    assert tokenizer.vocab_size == len(set(UNICODE)) + 1
    ids = tokenizer.encode(UNICODE)
    assert tokenizer.decode(ids) == UNICODE
    assert list(tokenizer.encode("Gq")) == [tokenizer.index["G"], tokenizer.unknown]   # q never seen
    assert tokenizer.decode(tokenizer.encode("Gq")) == "G\ufffd"
    assert from_state(tokenizer.state()).encode(UNICODE).tolist() == ids.tolist()


def test_bpe_learns_merges_and_round_trips_text_it_never_saw(tmp_path):
    tokenizer = train_bpe([UNICODE * 20], vocab_size=300, min_frequency=2)
    assert 256 < tokenizer.vocab_size <= 300
    ids = tokenizer.encode(UNICODE)
    assert len(ids) < len(UNICODE.encode("utf-8"))   # merges shorten the text
    unseen = "Ωmega ∀x: ∃y ≠ x — ничего нового\n"
    assert tokenizer.decode(tokenizer.encode(unseen)) == unseen and tokenizer.decode(ids) == UNICODE
    (tmp_path / "tokenizer.json").write_text(tokenizer.data(), encoding="utf-8")
    from_file = read_tokenizer_file(tmp_path / "tokenizer.json", None)
    assert from_file.encode(UNICODE).tolist() == ids.tolist()
    assert from_state(tokenizer.state()).encode(unseen).tolist() == tokenizer.encode(unseen).tolist()


# --- the token file: splits are contiguous, the tokenizer learns from train only -------------------
def test_splits_are_contiguous_character_ranges_tokenised_back_to_back(tmp_path):
    text = "a" * 800 + "b" * 100 + "c" * 100
    corpus = corpus_of(tmp_path, text)
    assert corpus.bounds == {"train": (0, 800), "val": (800, 900), "test": (900, 1000)}
    assert (decoded(corpus, "train"), decoded(corpus, "val"), decoded(corpus, "test")) == \
        ("a" * 800, "b" * 100, "c" * 100)
    assert corpus.tokens.dtype == np.uint16 and isinstance(corpus.tokens, np.memmap)
    assert corpus.counts["val"] == {"tokens": 100, "chars": 100, "bytes": 100}
    assert char_boundaries(1000, 0.1, 0.1) == [0, 800, 900, 1000]


def test_char_and_bpe_vocabularies_come_from_the_training_split_only(tmp_path):
    text = "the cat sat on the mat. " * 40 + "xyzzy quux " * 20
    edges = char_boundaries(len(text), 0.2, 0.0)
    assert text[:edges[1]].count("xyzzy") == 0   # the odd words lie in the val split only
    char = corpus_of(tmp_path, text, tokenizer="char", val=0.2, test=0.0)
    assert char.tokenizer.characters == "".join(sorted(set(text[:edges[1]])))
    assert "x" not in char.tokenizer.characters and decoded(char, "val").count("\ufffd") == 20 * len("xyzzyquux")
    bpe = corpus_of(tmp_path, text, tokenizer={"bpe": {"vocab_size": 400}}, val=0.2, test=0.0, name="b.txt")
    vocabulary = bpe.tokenizer.tokenizer.get_vocab()
    assert not [token for token in vocabulary if "zz" in token or "uu" in token]
    assert [token for token in vocabulary if "cat" in token]                      # learnt from train
    assert decoded(bpe, "train") + decoded(bpe, "val") == text                     # lossless


def test_folders_and_globs_read_their_txt_files_in_sorted_order_and_the_cache_follows_the_text(tmp_path):
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "b.txt").write_text("second\n")
    (tmp_path / "books" / "a.txt").write_text("first\n")
    (tmp_path / "books" / "skip.md").write_text("not text data\n")
    for source in ("text:books", "text:books/*.txt"):
        config = DataConfig(source=source, tokenizer="bytes", split={"val": 0.0, "test": 0.0})
        corpus = load_corpus(config, base_dir=tmp_path, cache_root=tmp_path / ".tokens", where=None,
                             tokenizer_where=None)
        assert decoded(corpus, "train") == "first\nsecond\n"
    again = load_corpus(config, base_dir=tmp_path, cache_root=tmp_path / ".tokens", where=None, tokenizer_where=None)
    assert again.folder == corpus.folder and len(list((tmp_path / ".tokens").iterdir())) == 1   # one entry, reused
    (tmp_path / "books" / "a.txt").write_text("changed\n")
    changed = load_corpus(config, base_dir=tmp_path, cache_root=tmp_path / ".tokens", where=None, tokenizer_where=None)
    assert changed.folder != corpus.folder and decoded(changed, "train") == "changed\nsecond\n"


@pytest.mark.parametrize("kind", ["parquet", "arrow"])
def test_parquet_and_arrow_text_columns_are_read_as_hugging_face_stores_them(tmp_path, kind):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"text": ["First document.", "Second — ünïcode.", None, "Third"], "label": [0, 1, 2, 3]})
    path = tmp_path / f"data.{kind}"
    if kind == "parquet":
        pq.write_table(table, path)
    else:
        with pa.ipc.new_file(str(path), table.schema) as writer:
            writer.write_table(table)
    config = DataConfig(source=f"{kind}:{path.name}", text_column="text", tokenizer="char",
                        split={"val": 0.0, "test": 0.0})
    corpus = load_corpus(config, base_dir=tmp_path, cache_root=tmp_path / ".tokens", where=None, tokenizer_where=None)
    assert decoded(corpus, "train") == "First document.\nSecond — ünïcode.\nThird\n"
    wrong = DataConfig(source=f"{kind}:{path.name}", text_column="label", tokenizer="bytes")
    with pytest.raises(SpecError, match="column 'label' has type int64; text_column must hold strings"):
        load_corpus(wrong, base_dir=tmp_path, cache_root=tmp_path / ".tokens", where=None, tokenizer_where=None)


# --- windows --------------------------------------------------------------------------------------
def test_training_windows_stay_in_their_split_and_the_target_is_the_next_token(tmp_path):
    text = "".join(chr(ord("a") + i % 26) for i in range(800)) + "B" * 100 + "C" * 100
    corpus = corpus_of(tmp_path, text)
    windows = split_windows(corpus, block_size=16, samples_per_epoch=None, steps=None, batch_size=8)
    train, val = windows["train"], windows["val"]
    assert len(train) == 800 // 16 and train.window_count == 800 - 16
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for (inputs,), target in train.batches(8, generator=generator):
        assert inputs.shape[1:] == (16,) and torch.equal(inputs[:, 1:], target[:, :-1])
        for row, next_tokens in zip(inputs, target):
            text_at = bytes(row.tolist()).decode()
            start = text.index(text_at)   # the pattern repeats every 26: any match fits
            assert start + 17 <= 800 and bytes(next_tokens.tolist()).decode() == text[start + 1:start + 17]
            seen.add(int(row[0]))
    assert all(chr(token).islower() for token in seen)          # never a val token in training
    for (inputs,), target in val.batches(4):
        assert set(torch.cat([inputs.flatten(), target.flatten()]).tolist()) == {ord("B")}


def test_evaluation_windows_cover_every_token_of_the_split_once_the_last_partial_window_ends_at_its_end(tmp_path):
    corpus = corpus_of(tmp_path, "x" * 800 + "".join(str(i % 10) for i in range(100)) + "y" * 100)
    val = split_windows(corpus, block_size=16, samples_per_epoch=None, steps=None, batch_size=8)["val"]
    starts = val.evaluation_starts().tolist()
    assert starts == [0, 16, 32, 48, 64, 80, 83]      # 83 = 100 - 17: the tail window, inside the split
    assert len(val) == math.ceil(99 / 16) == len(starts)
    covered = set()
    for start in starts:
        covered.update(range(start + 1, start + 17))
    assert covered == set(range(1, 100))
    (inputs,), target = val.read(np.array([83]))
    assert bytes(target[0].tolist()).decode() == "".join(str(i % 10) for i in range(84, 100))
    sizes = [len(target) for _, target in val.batches(3)]
    assert sizes == [3, 3, 1]


def test_samples_per_epoch_and_steps_bound_an_epoch(tmp_path):
    corpus = corpus_of(tmp_path, "abcdefgh" * 200)
    assert len(split_windows(corpus, 8, 100, None, 4)["train"]) == 100
    assert len(split_windows(corpus, 8, None, 7, 4)["train"]) == 28
    assert len(split_windows(corpus, 8, None, None, 4)["train"]) == 1280 // 8


def test_the_unigram_baseline_is_the_cross_entropy_of_train_frequencies(tmp_path):
    corpus = corpus_of(tmp_path, "aab" * 300 + "ab" * 50 + "b" * 125, val=0.2, test=0.0)   # train: 900 chars
    baseline = unigram_baseline(corpus)
    p_a, p_b = (600 + 1) / (900 + 256), (300 + 1) / (900 + 256)
    expected = -(50 * math.log(p_a) + 175 * math.log(p_b)) / 225
    assert baseline["val"]["loss"] == pytest.approx(expected)
    assert baseline["val"]["bits_per_char"] == pytest.approx(expected / math.log(2))


# --- errors: located at the spec's source line -----------------------------------------------------
def lm_spec(source: str, tokenizer="bytes", block_size=8, vocab="$tokenizer.vocab_size", **train_keys) -> dict:
    return {
        "name": "tiny_lm", "inputs": {"tokens": {"shape": [block_size], "dtype": "long"}},
        "vars": {"vocab_size": vocab},
        "layers": [{"Embedding": {"num_embeddings": "$vocab_size", "embedding_dim": 16}},
                   {"CausalSelfAttention": {"n_heads": 2, "max_len": block_size}},
                   {"Linear": {"out_features": "$vocab_size"}}],
        "train": {"data": {"source": source, "tokenizer": tokenizer, "split": {"val": 0.1, "test": 0.1},
                           "steps": 2},
                  "batch_size": 4, "epochs": 1, "loss": "CrossEntropyLoss", **train_keys},
    }


def write_spec(tmp_path, spec: dict, name: str = "lm.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, path.read_text().splitlines()


def line_of(lines: list[str], text: str) -> int:
    return next(index for index, line in enumerate(lines, start=1) if text in line)


@pytest.mark.parametrize("content, message", [
    (b"good line\nbad \xff byte\n", "corpus.txt:2: not UTF-8 text (byte 0xff at offset 14)"),
    (b"", "the text is empty"),
    (b"short text", "the train split has 8 tokens (8 characters), shorter than one window of block_size + 1 = 9"),
])
def test_bad_text_is_a_located_error_at_the_source_line(tmp_path, content, message):
    (tmp_path / "corpus.txt").write_bytes(content)
    path, lines = write_spec(tmp_path, lm_spec("text:corpus.txt"))
    with pytest.raises(SpecError) as error:
        train(path, out=tmp_path / "runs", verbose=False)
    problem = error.value.problems[0]
    assert message in problem.message
    assert (problem.location.line, problem.location.file) == (line_of(lines, "source: text:corpus.txt"), str(path))
    assert not (tmp_path / "runs" / "tiny_lm").exists()


def test_an_embedding_smaller_than_the_vocabulary_is_located_at_the_embedding(tmp_path):
    (tmp_path / "corpus.txt").write_text("some text for the model " * 20)
    path, lines = write_spec(tmp_path, lm_spec("text:corpus.txt", vocab=100))
    with pytest.raises(SpecError) as error:
        train(path, out=tmp_path / "runs", verbose=False)
    problem = error.value.problems[0]
    assert problem.message.startswith("the embedding has 100 rows but the tokenizer bytes (256 symbols) makes ids up "
                                      "to 255")
    assert problem.location.line == line_of(lines, "Embedding")


@pytest.mark.parametrize("tokenizer, warned", [("char", True), ("vocab/tokenizer.json", True), ("bytes", False),
                                               ({"bpe": {"vocab_size": 300}}, False)])
def test_a_guessed_vocabulary_is_a_located_warning_where_no_text_is_read(tmp_path, tokenizer, warned):
    """char and file tokenizers: 256 is a guess, and every count shown rests on it, so check/summary/build
    say so at the var; bytes (256) and bpe (N) are known before any text; a --set size is no guess."""
    from specc.build.compiler import compile as compile_spec

    path, lines = write_spec(tmp_path, lm_spec("text:corpus.txt", tokenizer=tokenizer))
    compiled = compile_spec(path, device="meta")
    stand_ins = [problem for problem in compiled.warnings if problem.code == "TOKENIZER_STAND_IN"]
    assert len(stand_ins) == warned
    if warned:
        (problem,) = stand_ins
        assert problem.message.startswith("vocab_size is 256 here, a stand-in for $tokenizer.vocab_size")
        assert "`--set vocab_size=N`" in problem.message
        assert (problem.location.file, problem.location.line) == (str(path), line_of(lines, "vocab_size:"))
        assert compile_spec(path, device="meta", vocab_size=96).warnings == []
        result = CliRunner().invoke(app, ["summary", str(path)])
        assert result.exit_code == 0 and f"warning: {path}:{problem.location.line}:" in result.output


def test_vocab_size_follows_the_tokenizer_and_the_tokenizer_is_saved_in_the_run_and_checkpoints(tmp_path):
    text = "hello world, hello specc. " * 40
    (tmp_path / "corpus.txt").write_text(text)
    path, _ = write_spec(tmp_path, lm_spec("text:corpus.txt", tokenizer="char", metrics=["bits_per_char"]))
    assert load(path).vars["vocab_size"] == 256        # the stand-in of commands that read no data
    result = train(path, out=tmp_path / "runs", verbose=False)
    state = load_checkpoint(result.best_checkpoint)
    characters = "".join(sorted(set(text[:int(len(text) * 0.8)])))
    assert state["tokenizer"] == {"kind": "char", "data": characters}
    assert state["spec"]["vars"]["vocab_size"] == len(characters) + 1
    assert state["model"]["0.weight"].shape == (len(characters) + 1, 16)
    assert (result.run_dir / "tokenizer.json").is_file()
    assert result.metrics["val"]["bits_per_char"] == pytest.approx(result.metrics["val"]["loss"] / math.log(2))


def test_resuming_mid_epoch_continues_with_the_same_windows(tmp_path, monkeypatch):
    import specc.train.loop

    (tmp_path / "corpus.txt").write_text("".join(f"line {i}: the quick brown fox\n" for i in range(200)))
    spec = lm_spec(str(tmp_path / "corpus.txt").join(["text:", ""]), epochs=2, optimizer={"SGD": {"lr": 0.1}})
    spec["train"]["data"]["steps"] = 5
    original, seen = specc.train.loop.train_step, {"straight": [], "stopped": [], "resumed": []}

    def recording(label):
        def step(session, inputs, target):
            seen[label].append(inputs[0].clone())
            if label == "stopped" and len(seen[label]) == 7:
                session.stop_requested = True   # Ctrl-C during epoch 2, step 2
            return original(session, inputs, target)
        return step

    monkeypatch.setattr(specc.train.loop, "train_step", recording("straight"))
    straight = train(copy.deepcopy(spec), out=tmp_path / "straight", verbose=False)
    monkeypatch.setattr(specc.train.loop, "train_step", recording("stopped"))
    stopped = train(copy.deepcopy(spec), out=tmp_path / "stopped", verbose=False)
    assert stopped.status == "interrupted"
    monkeypatch.setattr(specc.train.loop, "train_step", recording("resumed"))
    resumed = train(None, resume=stopped.run_dir / "interrupted.pt", verbose=False)
    assert resumed.ok and len(seen["resumed"]) == 3
    assert all(torch.equal(a, b) for a, b in zip(seen["straight"], seen["stopped"] + seen["resumed"]))
    a, b = load_checkpoint(straight.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    assert all(torch.equal(a["model"][key], b["model"][key]) for key in a["model"])


def test_a_tokenizer_mismatch_between_spec_and_checkpoint_is_located_at_the_tokenizer(tmp_path):
    (tmp_path / "corpus.txt").write_text("abcabcabd " * 60)
    path, _ = write_spec(tmp_path, lm_spec("text:corpus.txt", tokenizer="char"))
    result = train(path, out=tmp_path / "runs", verbose=False)
    other, lines = write_spec(tmp_path, lm_spec("text:corpus.txt", tokenizer="bytes"), "bytes.yaml")
    with pytest.raises(SpecError) as error:
        train(other, out=tmp_path / "runs", resume=result.last_checkpoint, verbose=False)
    problem = error.value.problems[0]
    assert "the checkpoint was trained with tokenizer char (6 symbols) but the spec's data give bytes (256 symbols)" \
        in problem.message
    assert problem.location.line == line_of(lines, "tokenizer: bytes")
    from specc.train.evaluation import evaluate

    with pytest.raises(SpecError, match="trained with tokenizer char"):
        evaluate(other, result.best_checkpoint, split="val")
    assert evaluate(path, result.best_checkpoint, split="val")["loss"] == pytest.approx(result.metrics["val"]["loss"])


def test_text_keys_are_checked_when_the_spec_loads():
    base = {"name": "x", "inputs": {"t": {"shape": [4], "dtype": "long"}}, "layers": ["Flatten"]}
    cases = [({"source": "text:a.txt"}, "text data need a `tokenizer`"),
             ({"source": "csv:a.csv", "tokenizer": "char"}, "`tokenizer` applies to text data only"),
             ({"source": "text:a.txt", "tokenizer": "chars"}, "did you mean 'char'"),
             ({"source": "text:a.txt", "tokenizer": "char", "steps": 3, "samples_per_epoch": 9}, "not both"),
             ({"source": "csv:a.csv", "text_column": "text"}, "`text_column` applies to parquet: and arrow:"),
             ({"source": "text:a.txt", "tokenizer": {"bpe": {"vocab_size": 100}}}, "greater than or equal to 257")]
    for data, message in cases:
        with pytest.raises(SpecError, match=message.replace("(", r"\(").replace("`", ".")):
            load({**base, "train": {"data": data, "loss": "CrossEntropyLoss"}})


def test_a_bpe_run_saves_a_tokenizer_json_that_a_second_run_can_name(tmp_path):
    text = "def add(a, b):\n    return a + b\n\n" * 60
    (tmp_path / "corpus.txt").write_text(text)
    path, _ = write_spec(tmp_path, lm_spec("text:corpus.txt", tokenizer={"bpe": {"vocab_size": 300}},
                                           metrics=["bits_per_byte"]))
    first = train(path, out=tmp_path / "runs", verbose=False)
    state = load_checkpoint(first.best_checkpoint)
    tokenizer = from_state(state["tokenizer"])
    assert state["tokenizer"]["kind"] == "bpe" and state["spec"]["vars"]["vocab_size"] == tokenizer.vocab_size
    assert tokenizer.decode(tokenizer.encode(text)) == text
    val_text = text[int(len(text) * 0.8):int(len(text) * 0.9)]
    tokens_per_byte = len(tokenizer.encode(val_text)) / len(val_text.encode())
    assert tokens_per_byte < 0.5   # merges: several bytes per token
    assert first.metrics["val"]["bits_per_byte"] == pytest.approx(
        first.metrics["val"]["loss"] / math.log(2) * tokens_per_byte, rel=0.02)
    named, _ = write_spec(tmp_path, lm_spec("text:corpus.txt", tokenizer=str(first.run_dir / "tokenizer.json")),
                          "named.yaml")
    second = train(named, out=tmp_path / "runs", verbose=False)
    reused = from_state(load_checkpoint(second.best_checkpoint)["tokenizer"])
    assert reused.kind == "file" and reused.encode(text).tolist() == tokenizer.encode(text).tolist()


def test_text_is_read_in_blocks_that_may_cut_a_character_and_errors_still_name_the_right_byte(tmp_path, monkeypatch):
    import specc.train.text_corpus as text_corpus

    monkeypatch.setattr(text_corpus, "BLOCK_BYTES", 7)   # far smaller than a line: characters are cut
    text = "".join(f"line {i}: Grüße 世界 🐍\n" for i in range(50))
    corpus = corpus_of(tmp_path, "\ufeff" + text, tokenizer="char", val=0.0, test=0.0)   # a BOM is no text
    assert decoded(corpus, "train") == text
    bad = text.encode() + "tail é".encode()[:-1] + b"\n"   # a cut two-byte character, then a newline
    with pytest.raises(SpecError, match=rf"bad.txt:51: not UTF-8 text \(byte 0xc3 at offset {len(text.encode()) + 5}\)"):
        corpus_of(tmp_path, bad, name="bad.txt")
