//! `echo`: returns the `message` it was given, unchanged. The smallest useful tool: it checks
//! that a host is wired up, and it is what the warm-call benchmark measures.

use guild_sdk::prelude::*;

/// Input of `echo`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Any text; it comes back as it went in.
    pub message: String,
}

/// Output of `echo`.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Output {
    /// The input message.
    pub message: String,
}

/// Return the message unchanged.
///
/// # Errors
/// None: the `Result` is the shape [`guild_sdk::export_tool!`] asks of a tool's function. Input
/// with unknown fields is refused before it is called.
pub fn echo(input: Input) -> Result<Output, ToolError> {
    Ok(Output { message: input.message })
}

guild_sdk::export_tool! {
    run: echo,
    describe: Info::new("echo", "Returns the message it is given, unchanged."),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_message() {
        let out = echo(Input { message: "héllo".into() }).expect("echo never fails");
        assert_eq!(out.message, "héllo");
    }

    #[test]
    fn rejects_unknown_fields_before_running() {
        let err = guild_sdk::__run(echo, r#"{"message":"x","extra":1}"#).expect_err("must reject");
        assert!(format!("{err:?}").contains("unknown field"), "{err:?}");
    }
}
