//! [`ToolInfo`]: what a tool's `describe` export says about it — name, version, schemas and the
//! capabilities it asks for — as the JSON `guild describe` prints and the tool catalogue lists.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Read-only or read-write. Ordered so that the lesser of two is the safer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Read only.
    ReadOnly,
    /// Read and write.
    ReadWrite,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::ReadOnly => "read-only",
            Access::ReadWrite => "read-write",
        })
    }
}

/// A directory a tool asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirRequest {
    /// Where the tool expects it, e.g. `/data`.
    pub guest_path: String,
    /// The most access it needs.
    pub access: Access,
    /// Why, for the operator.
    pub purpose: String,
}

/// Everything a tool asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Directories.
    pub dirs: Vec<DirRequest>,
    /// Egress rules.
    pub hosts: Vec<String>,
    /// Secret names.
    pub secrets: Vec<String>,
    /// Whether it uses GPU kernels.
    pub gpu: bool,
}

/// What a tool says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    /// Short name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Description for people and agents.
    pub description: String,
    /// JSON Schema of the input.
    pub input_schema: serde_json::Value,
    /// JSON Schema of the output, if declared.
    pub output_schema: Option<serde_json::Value>,
    /// What it asks to be granted.
    pub capabilities: Capabilities,
}
