"""The offline model: a tiny Llama with random weights and a locally trained tokenizer.

Why it exists: the fabric must run for real on a machine with no GPU and no network, so
it cannot download a model. This one is built from nothing in a few seconds and cached.
Its *text is random* (the weights are never trained), but its tokens, timing, batching and
memory behaviour in vLLM are real, which is what the fabric schedules and meters.

Any Hugging Face model id or local path can replace it (``--model``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from pydantic import BaseModel, Field

# Bumped whenever the recipe changes, so a stale cache is never reused.
RECIPE_VERSION = 2

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>",
                  "<|assistant|>", "<|tool|>", "<|end|>"]


class TinyModelRecipe(BaseModel):
    """Shape of the offline model. head_dim = hidden / heads must be >= 64 (vLLM CPU attention)."""

    hidden_size: int = Field(256, ge=64)
    num_attention_heads: int = Field(4, ge=1)
    num_key_value_heads: int = Field(2, ge=1)
    num_hidden_layers: int = Field(2, ge=1)
    intermediate_size: int = Field(512, ge=64)
    vocab_size: int = Field(2048, ge=300, description="BPE vocabulary to train (bytes + merges)")
    max_position_embeddings: int = Field(4096, ge=128)
    seed: int = 0

    def digest(self) -> str:
        blob = json.dumps({"v": RECIPE_VERSION, **self.model_dump()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# The offline models a spec can name as ``source: offline:<size>`` (no source: small). The
# large one is ~8x the compute per token: a real gap between tiers, still fast on a CPU.
OFFLINE = {
    "small": TinyModelRecipe(),
    "large": TinyModelRecipe(hidden_size=512, num_attention_heads=8, num_key_value_heads=4,
                             num_hidden_layers=4, intermediate_size=1536),
}


def cache_root() -> Path:
    """User cache directory (XDG), overridable with TOKEN_FABRIC_CACHE."""
    if os.environ.get("TOKEN_FABRIC_CACHE"):
        return Path(os.environ["TOKEN_FABRIC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "token-fabric"


def default_model_dir(recipe: TinyModelRecipe | None = None) -> Path:
    recipe = recipe or TinyModelRecipe()
    return cache_root() / "models" / f"tiny-llama-{recipe.digest()}"


_CORPUS_MODULES = ["json", "asyncio", "collections", "functools", "itertools", "pathlib",
                   "statistics", "string", "textwrap", "typing", "math", "random", "re",
                   "datetime", "heapq", "bisect", "dataclasses", "enum", "csv", "io"]


def _corpus() -> list[str]:
    """Deterministic English-and-code text from the standard library's own documentation,
    rendered in a fresh interpreter (a package's page lists the submodules imported so far,
    so rendering it here would depend on what this process has imported), addresses removed."""
    import subprocess

    code = ("import json, pydoc, sys\n"
            "names = json.loads(sys.argv[1])\n"
            "texts = [pydoc.render_doc(__import__(n), renderer=pydoc.plaintext) for n in names]\n"
            "sys.stdout.write(json.dumps(texts))\n")
    out = subprocess.run([sys.executable, "-I", "-c", code, json.dumps(sorted(_CORPUS_MODULES))],
                         capture_output=True, text=True, check=True, timeout=120)
    import re

    # object reprs carry memory addresses, which move from run to run
    texts: list[str] = [re.sub(r" at 0x[0-9a-f]+", "", t) for t in json.loads(out.stdout)]
    # Chat-shaped and fabric-shaped lines, so common agent vocabulary gets merges too.
    texts += ["The agent asks the fabric for tokens. Summarise the previous answer and continue.",
              "def step(state):\n    return {\"plan\": state, \"tool\": \"search\"}\n",
              "Power budget, energy price, carbon intensity, region, site, replica, request."] * 50
    return texts


def train_bpe(counts: dict[str, int], vocab_size: int, alphabet: list[str],
              specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-pair merges learnt from word counts, deterministically: the most frequent pair
    first, ties broken by the pair itself (the tokenizers library's trainer breaks ties by
    hash-map order, so two builds of the same corpus differ). Returns (vocab, merges)."""
    import heapq
    from collections import Counter, defaultdict

    vocab = {t: i for i, t in enumerate(specials)}
    for ch in sorted(set(alphabet) | {c for w in counts for c in w}):
        vocab.setdefault(ch, len(vocab))
    words = [list(w) for w in counts]
    freq = list(counts.values())
    pairs: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)

    def tally(i: int, sign: int) -> None:
        w = words[i]
        for pair in zip(w, w[1:]):
            pairs[pair] += sign * freq[i]
            if sign > 0:
                where[pair].add(i)
            heapq.heappush(heap, (-pairs[pair], pair))

    heap: list = []
    for i in range(len(words)):
        tally(i, +1)
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size and heap:
        count, pair = heapq.heappop(heap)
        if -count != pairs.get(pair, 0) or count == 0:
            continue  # an outdated entry (counts changed since it was pushed)
        a, b = pair
        merges.append(pair)
        vocab.setdefault(a + b, len(vocab))
        for i in sorted(where.pop(pair)):
            w = words[i]
            if not any(x == a and y == b for x, y in zip(w, w[1:])):
                continue
            tally(i, -1)
            merged, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    merged.append(a + b)
                    j += 2
                else:
                    merged.append(w[j])
                    j += 1
            words[i] = merged
            tally(i, +1)
        pairs.pop(pair, None)
    return vocab, merges


def build_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer learnt locally, wrapped as a transformers fast tokenizer."""
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    counts = Counter(w for text in _corpus() for w, _ in pre.pre_tokenize_str(text))
    vocab, merges = train_bpe(dict(sorted(counts.items())), vocab_size,
                              pre_tokenizers.ByteLevel.alphabet(), SPECIAL_TOKENS)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>",
                                   pad_token="<|pad|>", additional_special_tokens=SPECIAL_TOKENS[3:])
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 4096
    return fast


def build_model(out_dir: Path, recipe: TinyModelRecipe | None = None) -> Path:
    """Write a loadable Hugging Face model directory (config, safetensors, tokenizer)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    recipe = recipe or TinyModelRecipe()
    if recipe.hidden_size // recipe.num_attention_heads < 64:
        raise ValueError("head_dim (hidden_size / num_attention_heads) must be >= 64 for vLLM on CPU")
    tokenizer = build_tokenizer(recipe.vocab_size)
    torch.manual_seed(recipe.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size, num_hidden_layers=recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads, num_key_value_heads=recipe.num_key_value_heads,
        max_position_embeddings=recipe.max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id).save_pretrained(tmp)
    (tmp / "FABRIC_MODEL.json").write_text(json.dumps(
        {"recipe": recipe.model_dump(), "recipe_version": RECIPE_VERSION,
         "note": "random weights: generated text is meaningless; token counts and timing are real"},
        indent=2))
    if out_dir.exists():  # another process won the race; keep its copy
        import shutil
        shutil.rmtree(tmp)
    else:
        tmp.rename(out_dir)  # atomic: a half-written model is never visible
    return out_dir


def ensure_model(model: str | None = None, log=print) -> str:
    """Resolve a model source: None (or ``offline:small``) and ``offline:large`` build (once)
    and return a cached offline model's path; anything else (Hugging Face id or local path) is
    returned unchanged."""
    if model and not model.startswith("offline:"):
        path = Path(model).expanduser()
        return str(path.resolve()) if path.exists() else model
    size = (model or "offline:small").partition(":")[2]
    if size not in OFFLINE:
        raise ValueError(f"unknown offline model {model!r} (offline:{', offline:'.join(OFFLINE)})")
    recipe = OFFLINE[size]
    out = default_model_dir(recipe)
    if not (out / "config.json").exists():
        log(f"building the offline {size} model (random weights) in {out}")
        build_model(out, recipe)
    return str(out)


def model_sources(spec, override: str | None = None, log=print) -> dict[str, str]:
    """Every model of a spec resolved (offline ones built once); ``override`` (``--model``)
    replaces the first model's source."""
    return {m.id: ensure_model(override if i == 0 and override else m.source, log)
            for i, m in enumerate(spec.models)}


if __name__ == "__main__":
    print(ensure_model(sys.argv[1] if len(sys.argv) > 1 else None))
