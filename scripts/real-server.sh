#!/usr/bin/env bash
# Build and run a real llama.cpp `llama-server` with a tiny random-weight
# model, using only package registries (PyPI) and the local toolchain.
#
# Why: capacity and queueing behaviour must be checked against a server that
# does continuous batching like production servers, not only against the mock.
#
# Usage:
#   scripts/real-server.sh build         # build llama-server into the cache (idempotent)
#   scripts/real-server.sh model         # write model.gguf + tokenizer.json (idempotent)
#   scripts/real-server.sh start [PORT]  # run the server in the foreground (default 8002)
#   scripts/real-server.sh path          # print the cache directory
#
# Everything lives in a cache directory outside the repository so that the
# build never touches the work tree or the default test run.
set -euo pipefail

CACHE="${LLMLOAD_REAL_CACHE:-$HOME/.cache/llmload-real}"
VENV="$CACHE/venv"
BIN="$CACHE/bin/llama-server"
MODEL="$CACHE/model.gguf"
TOKENIZER="$CACHE/tokenizer.json"

log() { printf '[real-server] %s\n' "$*" >&2; }

# A private venv keeps cmake/ninja/gguf/numpy/tokenizers away from the
# system Python and makes the script independent of what is installed.
ensure_venv() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating venv in $VENV"
        mkdir -p "$CACHE"
        # Debian's own python3 needs the python3-venv package for this.
        python3 -m venv "$VENV" || {
            log "python3 -m venv failed; on Debian: apt-get install -y python3-venv"
            rm -rf "$VENV"
            exit 1
        }
    fi
}

# Install only the packages that are missing, so reruns cost nothing.
# Arguments are "module:package" pairs.
ensure_py() {
    ensure_venv
    local want=() pair mod pkg
    for pair in "$@"; do
        mod="${pair%%:*}"
        pkg="${pair#*:}"
        if ! "$VENV/bin/python" -c "import $mod" 2>/dev/null; then
            want+=("$pkg")
        fi
    done
    if ((${#want[@]})); then
        log "pip install ${want[*]}"
        "$VENV/bin/pip" install --quiet "${want[@]}"
    fi
}

cmd_build() {
    if [[ -x "$BIN" ]]; then
        log "llama-server already built: $BIN"
        return 0
    fi
    # The compiler is the one thing pip cannot provide.
    command -v c++ >/dev/null || {
        log "no C++ compiler; on Debian: apt-get install -y build-essential"
        exit 1
    }
    ensure_py cmake:cmake ninja:ninja
    local cmake="$VENV/bin/cmake" ninja="$VENV/bin/ninja"

    # llama-cpp-python's sdist vendors the llama.cpp sources, which is the
    # only way to get them from a package registry. --no-binary for this one
    # package only: ':all:' would also build cmake itself from source.
    local sdist_dir="$CACHE/sdist"
    if ! compgen -G "$sdist_dir/llama_cpp_python-*.tar.gz" >/dev/null; then
        log "downloading llama-cpp-python sdist"
        mkdir -p "$sdist_dir"
        "$VENV/bin/pip" download --quiet --no-deps --no-binary llama-cpp-python \
            --dest "$sdist_dir" llama-cpp-python
    fi
    local tarball
    tarball="$(compgen -G "$sdist_dir/llama_cpp_python-*.tar.gz" | sort -V | tail -n1)"

    # Copy the vendored tree out as a real directory. Its .git file points at
    # a submodule location that does not exist, and building in place or
    # through a symlink leaves ninja re-running cmake forever.
    local src="$CACHE/llama.cpp"
    if [[ ! -f "$src/CMakeLists.txt" ]]; then
        log "unpacking $(basename "$tarball")"
        local tmp="$CACHE/unpack"
        rm -rf "$tmp" "$src"
        mkdir -p "$tmp"
        tar -xzf "$tarball" -C "$tmp"
        cp -a "$tmp"/llama_cpp_python-*/vendor/llama.cpp "$src"
        rm -rf "$src/.git" "$tmp"
    fi

    # Nothing here may download: no curl/openssl model fetching, no prebuilt
    # web UI. Static libs give one self-contained binary. GGML_NATIVE is fine
    # because the binary is only ever run on the machine that built it.
    local build="$CACHE/build"
    if [[ ! -f "$build/build.ninja" ]]; then
        log "configuring"
        nice -n 19 "$cmake" -S "$src" -B "$build" -G Ninja \
            -DCMAKE_MAKE_PROGRAM="$ninja" \
            -DCMAKE_BUILD_TYPE=Release \
            -DGGML_NATIVE=ON \
            -DLLAMA_CURL=OFF \
            -DLLAMA_OPENSSL=OFF \
            -DLLAMA_USE_PREBUILT_UI=OFF \
            -DLLAMA_BUILD_UI=OFF \
            -DLLAMA_BUILD_TESTS=OFF \
            -DLLAMA_BUILD_EXAMPLES=OFF \
            -DLLAMA_BUILD_TOOLS=ON \
            -DLLAMA_BUILD_SERVER=ON \
            -DBUILD_SHARED_LIBS=OFF
    fi

    # The machine has 2 cores that are usually shared with a cargo build:
    # stay at the lowest priority and never use more than 2 jobs.
    log "building llama-server (nice 19, -j2; takes several minutes)"
    local start=$SECONDS
    nice -n 19 "$cmake" --build "$build" --target llama-server -j2
    mkdir -p "$(dirname "$BIN")"
    cp "$build/bin/llama-server" "$BIN.tmp"
    mv "$BIN.tmp" "$BIN"
    log "built $BIN in $((SECONDS - start))s"
}

cmd_model() {
    if [[ -s "$MODEL" && -s "$TOKENIZER" ]]; then
        log "model already present: $MODEL"
        return 0
    fi
    ensure_py gguf:gguf numpy:numpy tokenizers:tokenizers
    log "writing $MODEL and $TOKENIZER"
    OUT_DIR="$CACHE" "$VENV/bin/python" - <<'PY'
# Write a tiny llama-architecture GGUF with random weights plus the matching
# Hugging Face tokenizer.json. The tokenizer is a byte-level BPE trained here
# on Debian's own text, and the GGUF embeds exactly the same vocabulary and
# merges, so token counts on the client agree with llama-server's.
import glob
import gzip
import json
import os

import gguf
import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

OUT = os.environ["OUT_DIR"]
VOCAB = 8192
DIM, LAYERS, HEADS, FF = 256, 4, 4, 768
CTX = 8192
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS_CAP = 8 << 20  # bytes; enough for 8k merges, quick to train

# ChatML, so the chat endpoint's prompt framing uses our special tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def corpus():
    # Files every Debian system has (licenses, copyright notices, package
    # changelogs), in sorted order so the corpus is the same on every run.
    paths = sorted(glob.glob("/usr/share/common-licenses/*"))
    paths += sorted(glob.glob("/usr/share/doc/*/copyright"))
    paths += sorted(glob.glob("/usr/share/doc/*/changelog*.gz"))
    total = 0
    for p in paths:
        if total >= CORPUS_CAP or not os.path.isfile(p):
            continue
        try:
            opener = gzip.open if p.endswith(".gz") else open
            with opener(p, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        total += len(text)
        yield text


def train_tokenizer():
    tok = Tokenizer(models.BPE())
    # GPT-2 style byte-level pre-tokenization; llama.cpp's "gpt-2" pre-tokenizer
    # uses the same regex.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    return tok


def write_gguf(tok, path):
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    assert all(t is not None for t in tokens), "vocab ids are not dense"
    n_vocab = len(tokens)
    types = [
        gguf.TokenType.CONTROL if t in SPECIAL else gguf.TokenType.NORMAL for t in tokens
    ]

    w = gguf.GGUFWriter(path, "llama")
    w.add_name("llmload-tiny-random")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_context_length(CTX)
    w.add_embedding_length(DIM)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(HEADS)
    w.add_rope_dimension_count(DIM // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    eot = vocab["<|endoftext|>"]
    w.add_bos_token_id(eot)
    w.add_eos_token_id(eot)
    w.add_eot_token_id(vocab["<|im_end|>"])
    # No BOS in front of prompts, same as the HF tokenizer (no post-processor),
    # so counts match without adjustment.
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    # Fixed seed: the same model every time. Small std keeps activations sane.
    rng = np.random.default_rng(0)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    ones = np.ones(DIM, dtype=np.float32)  # norms stay F32, as llama.cpp expects
    # numpy shape is (out, in); gguf reverses it into ggml's (in, out).
    w.add_tensor("token_embd.weight", mat(n_vocab, DIM))
    for b in range(LAYERS):
        p = f"blk.{b}."
        w.add_tensor(p + "attn_norm.weight", ones)
        w.add_tensor(p + "attn_q.weight", mat(DIM, DIM))
        w.add_tensor(p + "attn_k.weight", mat(DIM, DIM))
        w.add_tensor(p + "attn_v.weight", mat(DIM, DIM))
        w.add_tensor(p + "attn_output.weight", mat(DIM, DIM))
        w.add_tensor(p + "ffn_norm.weight", ones)
        w.add_tensor(p + "ffn_gate.weight", mat(FF, DIM))
        w.add_tensor(p + "ffn_up.weight", mat(FF, DIM))
        w.add_tensor(p + "ffn_down.weight", mat(DIM, FF))
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", mat(n_vocab, DIM))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return n_vocab


tok = train_tokenizer()
# Write to temporary names and rename at the end, so an interrupted run never
# leaves a half-written pair that the idempotence check would accept.
tmp_tok = os.path.join(OUT, "tokenizer.json.tmp")
tmp_gguf = os.path.join(OUT, "model.gguf.tmp")
tok.save(tmp_tok)
n_vocab = write_gguf(tok, tmp_gguf)
os.replace(tmp_tok, os.path.join(OUT, "tokenizer.json"))
os.replace(tmp_gguf, os.path.join(OUT, "model.gguf"))
print(f"vocab {n_vocab}, model {os.path.getsize(os.path.join(OUT, 'model.gguf'))} bytes")
PY
}

cmd_start() {
    local port="${1:-8002}"
    [[ -x "$BIN" ]] || { log "not built; run: $0 build"; exit 1; }
    [[ -s "$MODEL" ]] || { log "no model; run: $0 model"; exit 1; }
    # exec so that the caller's PID (and signals) are the server's own.
    # -np 8 slots share -c 8192 context (1024 tokens each); -t 1 keeps the
    # server to one core so the load generator has the other one.
    exec "$BIN" -m "$MODEL" --alias tiny --host 127.0.0.1 --port "$port" \
        -np 8 -c 8192 -t 1 --metrics
}

case "${1:-}" in
    build) cmd_build ;;
    model) cmd_model ;;
    start) shift; cmd_start "$@" ;;
    path) echo "$CACHE" ;;
    *)
        echo "usage: $0 {build|model|start [PORT]|path}" >&2
        exit 2
        ;;
esac
