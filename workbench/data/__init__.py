"""Data: text sources, tokenizers, and token batches, all usable offline.

    text = load_text("stories")                  # or "pydoc", "file:PATH", "hf:NAME"
    tok = tokenizer_from_name("char", text)      # or "byte", "bpe:512"
    data = TokenData.from_text(text, tok)        # train/val ids, cached on disk
    batch = data.get_batch("train", 32, 129, torch.Generator().manual_seed(0))

``default_story_source().entropy_rate_per_char()`` is the exact loss floor of
the "stories" text, in nats per character.
"""
from workbench.data.corpora import DataUnavailableError, load_text
from workbench.data.stories import StorySource, default_story_source
from workbench.data.token_data import TokenData, default_cache_dir
from workbench.data.tokenizers import (
    BOS_ID,
    EOS_ID,
    MASK_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    TOKENIZERS,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    TokenizerFileError,
    UnknownTokenError,
    load_tokenizer,
    tokenizer_from_name,
)

__all__ = [
    "BOS_ID", "EOS_ID", "MASK_ID", "PAD_ID", "SPECIAL_TOKENS", "TOKENIZERS",
    "BPETokenizer", "ByteTokenizer", "CharTokenizer", "Tokenizer",
    "TokenizerFileError", "UnknownTokenError", "load_tokenizer", "tokenizer_from_name",
    "StorySource", "default_story_source",
    "DataUnavailableError", "load_text",
    "TokenData", "default_cache_dir",
]
