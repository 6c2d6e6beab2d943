"""`kvclaims demo-model`: the tiny model with a tokenizer that vLLM's server loads offline,
its special tokens at the model's ids, and a clear error where transformers is missing."""

import importlib.util
import json
from pathlib import Path

import pytest

from kvclaims.cli import main
from kvclaims.vllm.model_dir import BYTE0, SHAPE, VOCAB, byte_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The tokenizer as the server loads it: saved, then read back by AutoTokenizer."""
    transformers = pytest.importorskip("transformers", reason="transformers comes with vLLM")
    path = tmp_path_factory.mktemp("tokenizer")
    byte_tokenizer().save_pretrained(path)
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in path.iterdir()}
    return transformers.AutoTokenizer.from_pretrained(path)


def test_special_tokens_are_the_models(tokenizer):
    ids = (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert ids == (SHAPE["pad_token_id"], SHAPE["bos_token_id"], SHAPE["eos_token_id"])
    assert len(tokenizer) == VOCAB


def test_bytes_round_trip_and_every_id_decodes(tokenizer):
    text = "héllo, wörld\n"
    ids = tokenizer(text)["input_ids"]
    assert ids == [BYTE0 + b for b in text.encode()]
    assert tokenizer.decode(ids) == text
    assert all(isinstance(tokenizer.decode([i]), str) for i in range(VOCAB))  # a random model samples any id


def test_chat_template(tokenizer):
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<s><|user|>\nhi\n<|assistant|>\n"


def test_command_prints_the_built_directory(tmp_path, capsys):
    pytest.importorskip("transformers", reason="transformers comes with vLLM")
    assert main(["demo-model", str(tmp_path)]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.parent == tmp_path
    assert json.loads((path / "config.json").read_text())["vocab_size"] == VOCAB
    assert (path / "tokenizer.json").exists()


def test_without_transformers_one_line_error(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a)
    )
    assert main(["demo-model"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs transformers" in err and "pip install" in err
