//! `similar`: rank embedding vectors read from a mounted file against a query by cosine
//! similarity, on the host's GPU (the `cosine_topk` kernel), and return the best k.
//!
//! The file is JSON: `[{"id": "doc-1", "vector": [0.1, 0.2, ...]}, ...]`, every vector of the
//! query's length.

use guild_sdk::gpu::{self, Tensor};
use guild_sdk::prelude::*;

/// Most vectors one file may hold.
pub const ITEMS_MAX: usize = 1_000_000;

/// Input of `similar`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The embeddings file, under the `/data` mount.
    pub file: String,
    /// The query vector.
    pub query: Vec<f32>,
    /// How many matches to return (at most the number of vectors, at most 1024).
    #[serde(default = "default_k")]
    pub k: u32,
}

fn default_k() -> u32 {
    10
}

/// One entry of the embeddings file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// Its name.
    pub id: String,
    /// Its embedding.
    pub vector: Vec<f32>,
}

/// One match.
#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Match {
    /// The entry's id.
    pub id: String,
    /// Its position in the file, from 0.
    pub row: u32,
    /// Cosine similarity with the query, in [-1, 1].
    pub score: f32,
}

/// Output of `similar`.
#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Output {
    /// The best matches, best first.
    pub matches: Vec<Match>,
    /// Vectors ranked.
    pub rows: u32,
    /// Their length.
    pub dim: u32,
}

/// Read and check the file: every vector as long as the query.
///
/// # Errors
/// [`ToolError::InvalidInput`] when `file` is not under `/data/`, is not a JSON list of items with
/// an `id` and a `vector`, holds no vectors or more than [`ITEMS_MAX`], or a vector is not `dim`
/// long; [`ToolError::Denied`] (no permission) or [`ToolError::Failed`] when it cannot be read.
pub fn load(file: &str, dim: usize) -> Result<Vec<Item>, ToolError> {
    if !file.starts_with("/data/") {
        return Err(ToolError::invalid_input(format!("file must be under /data, got {file}")));
    }
    let text = std::fs::read_to_string(file).map_err(|e| ToolError::io(file, e))?;
    let items: Vec<Item> = serde_json::from_str(&text)
        .map_err(|e| ToolError::invalid_input(format!("{file} is not an embeddings file: {e}")))?;
    if items.is_empty() || items.len() > ITEMS_MAX {
        return Err(ToolError::invalid_input(format!(
            "{file} holds {} vectors; 1 to {ITEMS_MAX} are ranked",
            items.len()
        )));
    }
    if let Some(bad) = items.iter().find(|i| i.vector.len() != dim) {
        return Err(ToolError::invalid_input(format!(
            "vector {} has {} values, the query {dim}",
            bad.id,
            bad.vector.len()
        )));
    }
    Ok(items)
}

/// Rank the file's vectors against the query.
///
/// # Errors
/// [`ToolError::InvalidInput`] when the query is empty, or as [`load`]. A GPU error otherwise:
/// [`ToolError::Denied`] when GPU work is refused, [`ToolError::Failed`] for the rest (`k` of 0 or
/// over 1024, no GPU).
pub fn similar(input: Input) -> Result<Output, ToolError> {
    let dim = input.query.len();
    if dim == 0 {
        return Err(ToolError::invalid_input("the query is empty"));
    }
    let items = load(&input.file, dim)?;
    let too_many = |what: &str| ToolError::invalid_input(format!("more than 2^32 {what}"));
    let rows = u32::try_from(items.len()).map_err(|_| too_many("vectors"))?;
    let width = u32::try_from(dim).map_err(|_| too_many("numbers in the query"))?;
    let flat: Vec<f32> = items.iter().flat_map(|i| i.vector.iter().copied()).collect();
    let query = Tensor::from_f32(&[width], &input.query)?;
    let matrix = Tensor::from_f32(&[rows, width], &flat)?;
    let best = gpu::cosine_top_k(&query, &matrix, input.k.min(rows))?;
    guild_sdk::log::info(format!("ranked {rows} vectors of {dim} on the gpu"));
    let matches =
        best.into_iter().map(|(row, score)| Match { id: items[row as usize].id.clone(), row, score }).collect();
    Ok(Output { matches, rows, dim: width })
}

guild_sdk::export_tool! {
    run: similar,
    describe: Info::new("similar", "Rank embedding vectors from a mounted JSON file against a query by cosine similarity on the GPU; returns the top k.")
        .dir("/data", Access::ReadOnly, "the embeddings file")
        .gpu(),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_outside_data_and_bad_queries_are_refused() {
        let outside = Input { file: "/etc/passwd".into(), query: vec![1.0], k: 1 };
        assert!(matches!(similar(outside), Err(ToolError::InvalidInput(m)) if m.contains("/data")));
        let empty = Input { file: "/data/x.json".into(), query: vec![], k: 1 };
        assert!(matches!(similar(empty), Err(ToolError::InvalidInput(m)) if m.contains("empty")));
    }
}
