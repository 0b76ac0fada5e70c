//! guild-sdk: what a Guild tool author depends on.
//!
//! A tool is one ordinary Rust function from a `Deserialize + JsonSchema` input to a
//! `Serialize + JsonSchema` output. [`export_tool!`] turns it into the `guild:tool` component
//! exports: `describe` (with the input and output JSON Schemas derived from the types) and `run`
//! (which rejects input that does not deserialize before the function is called).
//!
//! ```
//! use guild_sdk::prelude::*;
//!
//! /// What the tool accepts.
//! #[derive(Deserialize, JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct Input {
//!     /// A name to greet.
//!     name: String,
//! }
//!
//! /// What the tool returns.
//! #[derive(Serialize, JsonSchema)]
//! struct Output {
//!     greeting: String,
//! }
//!
//! fn greet(input: Input) -> Result<Output, ToolError> {
//!     if input.name.is_empty() {
//!         return Err(ToolError::invalid_input("name must not be empty"));
//!     }
//!     guild_sdk::log::info(format!("greeting {}", input.name));
//!     Ok(Output { greeting: format!("Hello, {}!", input.name) })
//! }
//!
//! guild_sdk::export_tool! {
//!     run: greet,
//!     describe: Info::new("greet", "Greets someone by name.")
//!         .dir("/data", Access::ReadOnly, "not needed, shown as an example"),
//! }
//!
//! // The function is ordinary Rust: test it natively (log lines go to stderr off wasm).
//! # fn main() -> Result<(), ToolError> {
//! assert_eq!(greet(Input { name: "Ada".into() })?.greeting, "Hello, Ada!");
//! # Ok(())
//! # }
//! ```
//!
//! GPU work goes through [`gpu`]: typed [`gpu::Tensor`]s and the host's kernel catalogue.
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the `.wasm` under
//! `target/wasm32-wasip2/release/` is the tool.

mod error;
pub mod gpu;
mod info;
pub mod log;

/// Everything a tool's source usually needs: `use guild_sdk::prelude::*;`.
///
/// It brings `schemars` into scope too, which `#[derive(JsonSchema)]` refers to, so a tool
/// crate depends only on `guild-sdk` and `serde`.
pub mod prelude {
    pub use crate::{Access, Info, ToolError, schemars};
    pub use schemars::JsonSchema;
    pub use serde::{Deserialize, Serialize};
}

pub use error::ToolError;
pub use info::{Access, Info};
pub use schemars::{self, JsonSchema};
#[doc(hidden)]
pub use serde_json as __serde_json;

#[doc(hidden)]
#[allow(missing_docs, unreachable_pub, unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "guild-tool",
        pub_export_macro: true,
        export_macro_name: "__export_guild_tool_world",
        default_bindings_module: "guild_sdk::bindings",
    });
}

use bindings::exports::guild::tool::tool as wit;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Adapter behind `run`: parse, call, serialize. Not for direct use.
#[doc(hidden)]
pub fn __run<I, O, F>(run: F, input: &str) -> Result<String, wit::ToolError>
where
    I: DeserializeOwned,
    O: Serialize,
    F: FnOnce(I) -> Result<O, ToolError>,
{
    let parsed: I = serde_json::from_str(input)
        .map_err(|e| wit::ToolError::InvalidInput(format!("input does not match the schema: {e}")))?;
    let output = run(parsed).map_err(ToolError::into_wit)?;
    serde_json::to_string(&output).map_err(|e| wit::ToolError::Failed(format!("output could not be serialized: {e}")))
}

/// Adapter behind `describe`: fills in the schemas from the function's types. Not for direct use.
#[doc(hidden)]
pub fn __describe<I, O, F>(_run: F, info: Info, default_version: &str) -> wit::ToolInfo
where
    I: JsonSchema,
    O: JsonSchema,
    F: FnOnce(I) -> Result<O, ToolError>,
{
    let input_schema = schemars::schema_for!(I);
    let output_schema = schemars::schema_for!(O);
    info.into_wit(default_version, input_schema.as_value().to_string(), Some(output_schema.as_value().to_string()))
}

/// Export a function as this component's Guild tool.
///
/// `run:` names a function `fn(Input) -> Result<Output, ToolError>`; `describe:` is an [`Info`]
/// expression. The version defaults to the tool crate's `CARGO_PKG_VERSION`.
///
/// The macro defines a type, `__GuildTool`, implementing the `guild-tool` world's `Guest` trait
/// (in the generated, hidden `bindings` module): its `describe` fills in the JSON Schemas of
/// the function's types, and its `run` refuses input that does not deserialize before calling
/// the function. Only a `wasm32` build also exports it under the component's symbol names; a
/// native build (this example, a tool's unit tests) cannot link those, so there the exports
/// are ordinary functions, and the example calls them as a host would:
///
/// ```
/// use guild_sdk::bindings::exports::guild::tool::tool::{Guest, ToolError as WitToolError};
/// use guild_sdk::prelude::*;
///
/// #[derive(Deserialize, JsonSchema)]
/// #[serde(deny_unknown_fields)]
/// struct Input {
///     /// Text to shout.
///     text: String,
/// }
///
/// #[derive(Serialize, JsonSchema)]
/// struct Output {
///     /// The text in capitals.
///     text: String,
/// }
///
/// fn shout(input: Input) -> Result<Output, ToolError> {
///     if input.text.is_empty() {
///         return Err(ToolError::invalid_input("text must not be empty"));
///     }
///     Ok(Output { text: input.text.to_uppercase() })
/// }
///
/// guild_sdk::export_tool! {
///     run: shout,
///     describe: Info::new("shout", "Returns its text in capitals.").version("1.2.0"),
/// }
///
/// fn main() {
///     let info = __GuildTool::describe();
///     assert_eq!((info.name.as_str(), info.version.as_str()), ("shout", "1.2.0"));
///     assert!(info.input_schema.contains(r#""text""#), "{}", info.input_schema);
///
///     let ran = __GuildTool::run(r#"{"text":"hi"}"#.to_string());
///     assert!(matches!(ran.as_deref(), Ok(r#"{"text":"HI"}"#)), "{ran:?}");
///     // Input that does not match the schema never reaches `shout`...
///     let unknown = __GuildTool::run(r#"{"txt":"hi"}"#.to_string());
///     assert!(matches!(unknown, Err(WitToolError::InvalidInput(_))), "{unknown:?}");
///     // ...and `shout`'s own refusal keeps its kind.
///     let empty = __GuildTool::run(r#"{"text":""}"#.to_string());
///     assert!(matches!(empty, Err(WitToolError::InvalidInput(ref m)) if m == "text must not be empty"));
/// }
/// ```
#[macro_export]
macro_rules! export_tool {
    (run: $run:path, describe: $info:expr $(,)?) => {
        #[allow(dead_code)]
        struct __GuildTool;

        impl $crate::bindings::exports::guild::tool::tool::Guest for __GuildTool {
            fn describe() -> $crate::bindings::exports::guild::tool::tool::ToolInfo {
                $crate::__describe($run, $info, env!("CARGO_PKG_VERSION"))
            }

            fn run(
                input: ::std::string::String,
            ) -> ::std::result::Result<
                ::std::string::String,
                $crate::bindings::exports::guild::tool::tool::ToolError,
            > {
                $crate::__run($run, &input)
            }
        }

        // Only a wasm build exports: a native build (the tool's unit tests) cannot link symbol
        // names such as `guild:tool/tool@0.1.0#run`.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_guild_tool_world!(__GuildTool with_types_in $crate::bindings);
    };
}
