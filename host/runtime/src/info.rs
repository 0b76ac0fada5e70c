//! Reading a tool's `describe` answer into [`ToolInfo`] (the vocabulary type, in `guild-vocab`),
//! checking that its schemas are JSON.

use crate::bindings::exports::guild::tool::tool as wit;
use crate::bindings::guild::tool::types as wit_types;
use guild_vocab::{Access, Capabilities, DirRequest, ToolInfo};

/// Convert what the guest returned, checking that its schemas are JSON.
pub(crate) fn tool_info_from_wit(info: wit::ToolInfo) -> Result<ToolInfo, String> {
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
    Ok(ToolInfo {
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
