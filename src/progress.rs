//! Progress bars for the long commands (`simulate`, `features`,
//! `evaluate`, `backtest`), on stderr. indicatif draws nothing when stderr
//! is not a terminal, so scripts, tests and CI logs stay clean.

use indicatif::{ProgressBar, ProgressStyle};

/// Work this small finishes before a bar would help.
const WORTH_A_BAR: u64 = 100_000;

/// A bar over `len` items of `what` (`"transactions"`); hidden for small
/// work. `len` 0 means unknown: a counter without an end.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    if len != 0 && len < WORTH_A_BAR {
        return ProgressBar::hidden();
    }
    let (bar, template) = if len == 0 {
        (
            ProgressBar::no_length(),
            format!("{{spinner}} {{pos}} {what} [{{elapsed_precise}}] {{per_sec}}"),
        )
    } else {
        (
            ProgressBar::new(len),
            format!(
                "{{bar:40}} {{pos}}/{{len}} {what} [{{elapsed_precise}}] {{per_sec}} eta {{eta}}"
            ),
        )
    };
    bar.set_style(ProgressStyle::with_template(&template).expect("a valid template"));
    bar
}
