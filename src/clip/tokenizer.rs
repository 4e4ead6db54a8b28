//! Text to token ids with Hugging Face's `tokenizers` crate, from the repository's
//! `tokenizer.json`: the same normaliser, pre-tokenizer, BPE or Unigram model and special
//! tokens as `transformers`' fast tokenizers. Sequences are cut to the text tower's context
//! (the end-of-text token kept) and, for SigLIP, padded to it, as its model card says.

use std::path::Path;

use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::config::{TextPool, TextSpec};
use super::error::ClipError;

/// A repository's tokenizer, set up for its text tower.
pub struct TextTokenizer {
    inner: Tokenizer,
    pool: TextPool,
    /// The end-of-text id (CLIP's pooled position).
    eos: Option<u32>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("pool", &self.pool)
            .field("eos", &self.eos)
            .finish()
    }
}

/// Token ids of several texts, one length, and where each is pooled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<Vec<u32>>,
    pub positions: Vec<usize>,
}

impl TextTokenizer {
    pub fn open(path: &Path, spec: &TextSpec) -> Result<Self, ClipError> {
        let mut inner = Tokenizer::from_file(path)
            .map_err(|e| ClipError::config(path, format!("cannot read the tokenizer: {e}")))?;
        let eos = ["<|endoftext|>", "</s>"]
            .iter()
            .find_map(|t| inner.token_to_id(t));
        inner
            .with_truncation(Some(TruncationParams {
                max_length: spec.context,
                ..Default::default()
            }))
            .map_err(|e| ClipError::config(path, e.to_string()))?;
        match spec.pool {
            TextPool::Last => {
                let pad_id = eos.unwrap_or(1);
                let pad_token = inner.id_to_token(pad_id).unwrap_or_else(|| "</s>".into());
                inner.with_padding(Some(PaddingParams {
                    strategy: PaddingStrategy::Fixed(spec.context),
                    pad_id,
                    pad_token,
                    ..Default::default()
                }));
            }
            TextPool::FirstEos => {
                if eos.is_none() {
                    return Err(ClipError::config(path, "no <|endoftext|> token".into()));
                }
                inner.with_padding(None);
            }
        }
        Ok(Self {
            inner,
            pool: spec.pool,
            eos,
        })
    }

    /// The ids of one text, with its special tokens, cut to the context.
    pub fn ids(&self, text: &str) -> Result<Vec<u32>, ClipError> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| ClipError::Tokenize(format!("{text:?}: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The ids of `texts`, padded to one length, and the position each is pooled at.
    pub fn encode(&self, texts: &[String]) -> Result<Encoded, ClipError> {
        let mut ids = texts
            .iter()
            .map(|t| self.ids(t))
            .collect::<Result<Vec<_>, _>>()?;
        let positions = match self.pool {
            TextPool::Last => ids.iter().map(|row| row.len().saturating_sub(1)).collect(),
            TextPool::FirstEos => {
                let eos = self.eos.unwrap_or(0);
                let positions: Vec<usize> = ids
                    .iter()
                    .map(|row| {
                        row.iter()
                            .position(|&id| id == eos)
                            .unwrap_or(row.len() - 1)
                    })
                    .collect();
                // Causal attention: what follows the pooled token never reaches it, so any
                // padding will do.
                let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
                for row in &mut ids {
                    row.resize(longest, eos);
                }
                positions
            }
        };
        Ok(Encoded { ids, positions })
    }
}
