"""An offline draft/target pair: trained here, on text every Python install ships.

Real speculative decoding needs a draft that agrees with its target more often than
chance, and hub downloads are impossible here and in CI. So the project builds its own
pair, deterministically, from the CPython standard library's own sources (the ``*.py``
files next to ``os.py``, in sorted order):

1. a byte-level BPE tokenizer (``tokenizers``) trained on that corpus;
2. a small Llama-architecture **target** trained on it (next-token cross entropy, AdamW);
3. a smaller **draft** distilled from the target (KL divergence to the target's
   next-token distribution at temperature 1, plus a little cross entropy on the data).

What is guaranteed: the same weights, byte for byte (``pair.yaml``'s ``weights_sha256``),
from the same settings (seed and thread count included), the same Python (so the same
corpus), the same torch, transformers and tokenizers, and a CPU of the same instruction
set as torch dispatches to (``torch.backends.cpu.get_cpu_capability()``: AVX512, AVX2...).
Every draw comes from a seeded generator and training runs on one thread, so float sums
keep one order; but torch's kernels sum in another order on another instruction set, so
an AVX2 machine builds other weights than an AVX512 one (``ATEN_CPU_CAPABILITY=avx2`` shows
it on one machine). ``pair.yaml`` records all of these under ``provenance``.

The result is a directory that transformers loads offline (``target/``, ``draft/``,
``tokenizer.json``) with ``pair.yaml``: the settings, the corpus digest, the losses and the
draft's top-1 agreement with the target on held-out text. Acceptance is never set here: it
is whatever the real backend measures with this pair (``analysis/acceptance_curves.py``
measures the shipped curves, with this file's provenance).
"""

from __future__ import annotations

import hashlib
import platform
import sysconfig
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import StarsimError
from ..version import __version__


@dataclass
class Arch:
    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int


@dataclass
class PairSettings:
    """What to build; the defaults take a few minutes on a 2-core CPU."""

    vocab_size: int = 2048
    seq_len: int = 128
    corpus_bytes: int = 3_000_000  # of the stdlib sources, in sorted file order
    holdout_bytes: int = 100_000  # the tail of the corpus, never trained on
    target: Arch = field(default_factory=lambda: Arch(hidden_size=256, layers=4, heads=4, intermediate_size=688))
    draft: Arch = field(default_factory=lambda: Arch(hidden_size=128, layers=1, heads=2, intermediate_size=344))
    target_steps: int = 300
    draft_steps: int = 200
    batch: int = 16
    lr: float = 3e-3
    seed: int = 0
    threads: int = 1  # one thread: float sums in a fixed order, so the weights repeat exactly


QUICK = PairSettings(
    vocab_size=512, seq_len=64, corpus_bytes=300_000, holdout_bytes=20_000,
    target=Arch(hidden_size=64, layers=2, heads=2, intermediate_size=172),
    draft=Arch(hidden_size=32, layers=1, heads=1, intermediate_size=88),
    target_steps=40, draft_steps=30, batch=8,
)
"""A small pair for tests and smoke runs: seconds on a CPU."""


def stdlib_corpus(limit: int) -> tuple[str, list[str]]:
    """The first ``limit`` bytes of the stdlib's top-level ``*.py`` files, in sorted order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    if not files:
        raise StarsimError(f"no Python sources found in the standard library folder {root}")
    parts, used, size = [], [], 0
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        used.append(f.name)
        size += len(text.encode())
        if size >= limit:
            break
    return "\n".join(parts).encode()[:limit].decode("utf-8", errors="ignore"), used


def train_tokenizer(text: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = text.splitlines(keepends=True)
    tok.train_from_iterator(("".join(lines[i:i + 256]) for i in range(0, len(lines), 256)), trainer=trainer)
    return tok


def _llama(arch: Arch, vocab: int, seq_len: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.layers, num_attention_heads=arch.heads, num_key_value_heads=arch.heads,
        max_position_embeddings=max(2048, 4 * seq_len), tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=0, pad_token_id=0,
    )
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg)


def _batches(ids, s: PairSettings, gen):
    import torch

    n = ids.numel() - s.seq_len - 1
    while True:
        starts = torch.randint(0, n, (s.batch,), generator=gen)
        x = torch.stack([ids[i:i + s.seq_len + 1] for i in starts.tolist()])
        yield x[:, :-1], x[:, 1:]


def _train(model, steps: int, s: PairSettings, data, loss_fn, say) -> list[float]:
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=steps, pct_start=0.1)
    losses = []
    model.train()
    for step in range(steps):
        x, y = next(data)
        loss = loss_fn(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if say and (step + 1) % max(1, steps // 10) == 0:
            say(f"  step {step + 1}/{steps}: loss {losses[-1]:.3f}")
    model.eval()
    return losses


def _holdout_stats(target, draft, ids, s: PairSettings) -> dict[str, float]:
    """Target loss and the draft's greedy top-1 agreement with the target, on held-out text."""
    import torch

    n = (ids.numel() - 1) // s.seq_len
    x = ids[: n * s.seq_len].view(n, s.seq_len)[:32]
    y = ids[1: n * s.seq_len + 1].view(n, s.seq_len)[:32]
    with torch.inference_mode():
        lt = target(input_ids=x).logits
        ld = draft(input_ids=x).logits
    ce = torch.nn.functional.cross_entropy(lt.reshape(-1, lt.shape[-1]), y.reshape(-1))
    agree = (lt.argmax(-1) == ld.argmax(-1)).float().mean()
    return {"target_loss": round(float(ce), 4), "draft_target_top1_agreement": round(float(agree), 4),
            "target_top1_accuracy": round(float((lt.argmax(-1) == y).float().mean()), 4)}


def build_pair(out: str | Path, s: PairSettings | None = None, say=None) -> dict[str, Any]:
    """Build the pair into ``out`` (see the module docstring); returns what ``pair.yaml`` holds."""
    import torch
    import torch.nn.functional as F
    from transformers import PreTrainedTokenizerFast

    s = s or PairSettings()
    say = say or (lambda msg: None)
    out = Path(out)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        text, files = stdlib_corpus(s.corpus_bytes)
        digest = hashlib.sha256(text.encode()).hexdigest()
        say(f"corpus: {len(text.encode()):,} bytes from {len(files)} stdlib files (sha256 {digest[:12]})")
        tok = train_tokenizer(text, s.vocab_size)
        vocab = tok.get_vocab_size()
        ids = torch.tensor(tok.encode(text).ids, dtype=torch.long)
        cut = len(tok.encode(text[-s.holdout_bytes:]).ids) if s.holdout_bytes else 0
        train_ids, hold_ids = ids[: ids.numel() - cut], ids[ids.numel() - cut:]
        say(f"tokenizer: vocab {vocab}, {ids.numel():,} tokens ({train_ids.numel():,} train, {cut:,} held out)")

        torch.manual_seed(s.seed)
        target = _llama(s.target, vocab, s.seq_len)
        gen = torch.Generator().manual_seed(s.seed)
        say(f"target: {sum(p.numel() for p in target.parameters()):,} parameters, {s.target_steps} steps")

        def ce(model, x, y):
            logits = model(input_ids=x).logits
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

        t_losses = _train(target, s.target_steps, s, _batches(train_ids, s, gen), ce, say)

        torch.manual_seed(s.seed + 1)
        draft = _llama(s.draft, vocab, s.seq_len)
        say(f"draft: {sum(p.numel() for p in draft.parameters()):,} parameters, {s.draft_steps} distillation steps")

        def distill(model, x, y):
            with torch.no_grad():
                teacher = target(input_ids=x).logits.log_softmax(-1)
            logits = model(input_ids=x).logits
            kl = F.kl_div(logits.log_softmax(-1), teacher, log_target=True, reduction="batchmean") / x.shape[1]
            return kl + 0.1 * F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

        d_losses = _train(draft, s.draft_steps, s, _batches(train_ids, s, gen), distill, say)
        stats = _holdout_stats(target, draft, hold_ids if hold_ids.numel() > s.seq_len + 1 else train_ids, s)
        say(f"held out: target loss {stats['target_loss']}, draft/target top-1 agreement "
            f"{stats['draft_target_top1_agreement']}")

        out.mkdir(parents=True, exist_ok=True)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")
        for name, model in (("target", target), ("draft", draft)):
            model.save_pretrained(out / name)
            fast.save_pretrained(out / name)
        tok.save(str(out / "tokenizer.json"))
        info = {
            "kind": "starsim offline pair",
            "settings": asdict(s),
            "corpus": {"source": "CPython standard library *.py (sorted)", "files": len(files),
                       "first": files[0], "last": files[-1], "bytes": len(text.encode()), "sha256": digest},
            "tokenizer": {"kind": "byte-level BPE (tokenizers)", "vocab_size": vocab},
            "losses": {"target_first": round(t_losses[0], 4), "target_last": round(t_losses[-1], 4),
                       "draft_first": round(d_losses[0], 4), "draft_last": round(d_losses[-1], 4)},
            "holdout": stats,
            "weights_sha256": {n: weights_digest(out / n) for n in ("target", "draft")},
            "provenance": {**build_environment(), "platform": platform.platform(),
                           "wall_s": round(time.perf_counter() - t0, 1),
                           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        }
        (out / "pair.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
        return info
    finally:
        torch.set_num_threads(threads)


def build_environment() -> dict[str, Any]:
    """What the weights depend on beyond the settings (see the module docstring): the packages'
    versions and the instruction set torch's CPU kernels use here."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def v(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"starsim": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
            "transformers": v("transformers"), "tokenizers": v("tokenizers"), "safetensors": v("safetensors"),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def pair_info(pair: str | Path) -> dict[str, Any]:
    """What ``pair.yaml`` holds ({} for a pair directory without one, e.g. a hand-made one)."""
    f = Path(pair) / "pair.yaml"
    return yaml.safe_load(f.read_text()) if f.exists() else {}


def weights_digest(model_dir: str | Path) -> str:
    """sha256 over the model's tensors (names and bytes), independent of file metadata."""
    from safetensors import safe_open

    h = hashlib.sha256()
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in sorted(st.keys()):
                t = st.get_tensor(name)
                h.update(name.encode())
                h.update(t.contiguous().view(-1).numpy().tobytes())
    return h.hexdigest()
