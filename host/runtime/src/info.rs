//! [`ToolInfo`]: what a tool's `describe` export says about it, in host types that serialize to
//! the JSON `guild describe` prints and later issues put in bundles and the tool catalogue.

use crate::bindings::exports::guild::tool::tool as wit;
use crate::bindings::guild::tool::types as wit_types;
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

impl ToolInfo {
    /// Convert what the guest returned, checking that its schemas are JSON.
    pub(crate) fn from_wit(info: wit::ToolInfo) -> Result<Self, String> {
        let input_schema = serde_json::from_str(&info.input_schema)
            .map_err(|e| format!("describe returned an input schema that is not JSON: {e}"))?;
        let output_schema = match info.output_schema {
            Some(s) => Some(
                serde_json::from_str(&s)
                    .map_err(|e| format!("describe returned an output schema that is not JSON: {e}"))?,
            ),
            None => None,
        };
        if info.name.trim().is_empty() {
            return Err("describe returned an empty tool name".to_string());
        }
        let caps = info.capabilities;
        Ok(Self {
            name: info.name,
            version: info.version,
            description: info.description,
            input_schema,
            output_schema,
            capabilities: Capabilities {
                dirs: caps
                    .dirs
                    .into_iter()
                    .map(|d| DirRequest {
                        guest_path: d.guest_path,
                        access: match d.access {
                            wit_types::Access::ReadOnly => Access::ReadOnly,
                            wit_types::Access::ReadWrite => Access::ReadWrite,
                        },
                        purpose: d.purpose,
                    })
                    .collect(),
                hosts: caps.hosts,
                secrets: caps.secrets,
                gpu: caps.gpu,
            },
        })
    }
}
