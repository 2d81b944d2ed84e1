//! How every CLI command prints what it got: the operator's table or text by default, the REST
//! object as pretty JSON with `--json` (for scripts and tests), one rule in one place.

use anyhow::Result;
use serde::Serialize;

/// Prints `value` as pretty JSON when `json` is set, otherwise through `text` (a table or
/// details written for a person).
pub fn print_or_json<T: Serialize + ?Sized>(
    value: &T,
    json: bool,
    text: impl FnOnce(&T),
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        text(value);
    }
    Ok(())
}
