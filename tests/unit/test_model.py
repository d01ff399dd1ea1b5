import json

import pytest

from fabric.model import TinyModelRecipe, build_model, default_model_dir, ensure_model

SMALL = TinyModelRecipe(hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                        intermediate_size=128, vocab_size=400, max_position_embeddings=256)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("m") / "tiny", SMALL)


def test_model_dir_is_loadable_llama(built):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(built)
    assert cfg.model_type == "llama"
    assert cfg.hidden_size // cfg.num_attention_heads == 64
    model = AutoModelForCausalLM.from_pretrained(built)
    assert sum(p.numel() for p in model.parameters()) > 10_000
    meta = json.loads((built / "FABRIC_MODEL.json").read_text())
    assert "random" in meta["note"]


def test_tokenizer_round_trips_and_has_chat_template(built):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built)
    text = "Power budget: 3.2 MW, carbon 120 gCO2/kWh — déjà vu {\"json\": true}"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text  # byte-level BPE: any text survives
    assert len(tok) <= SMALL.vocab_size
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt.startswith("<|bos|>") and "<|user|>\nhi<|end|>" in prompt
    assert prompt.endswith("<|assistant|>\n")


def test_build_is_deterministic(tmp_path, built):
    again = build_model(tmp_path / "again", SMALL)
    assert (again / "tokenizer.json").read_text() == (built / "tokenizer.json").read_text()
    assert (again / "model.safetensors").read_bytes() == (built / "model.safetensors").read_bytes()


def test_head_dim_below_64_is_refused(tmp_path):
    with pytest.raises(ValueError, match="head_dim"):
        build_model(tmp_path / "bad", TinyModelRecipe(hidden_size=64, num_attention_heads=4))


def test_ensure_model_builds_once_into_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKEN_FABRIC_CACHE", str(tmp_path))
    logs = []
    path = ensure_model(None, log=logs.append)
    assert path == str(default_model_dir()) and path.startswith(str(tmp_path))
    stamp = (default_model_dir() / "model.safetensors").stat().st_mtime_ns
    assert ensure_model(None, log=logs.append) == path
    assert len(logs) == 1  # the second call found the cache
    assert (default_model_dir() / "model.safetensors").stat().st_mtime_ns == stamp


def test_ensure_model_passes_other_models_through(tmp_path):
    assert ensure_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert ensure_model(str(tmp_path)) == str(tmp_path.resolve())


def test_recipe_digest_changes_with_shape():
    assert TinyModelRecipe().digest() != SMALL.digest()
