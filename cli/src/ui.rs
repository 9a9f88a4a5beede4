//! Terminal output: colours only on a TTY and never with `NO_COLOR`, status
//! symbols, and spinners that show only on a TTY.

use std::io::IsTerminal;
use std::time::Duration;

use console::Style;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Decides once, at start, whether colours are used on stdout and stderr.
pub fn init_colours() {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let term_dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
    console::set_colors_enabled(!no_color && !term_dumb && std::io::stdout().is_terminal());
    console::set_colors_enabled_stderr(!no_color && !term_dumb && std::io::stderr().is_terminal());
}

pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

pub fn stderr_is_tty() -> bool {
    std::io::stderr().is_terminal()
}

pub fn bold(text: &str) -> String {
    Style::new().bold().apply_to(text).to_string()
}

pub fn dim(text: &str) -> String {
    Style::new().dim().apply_to(text).to_string()
}

pub fn green(text: &str) -> String {
    Style::new().green().apply_to(text).to_string()
}

pub fn yellow(text: &str) -> String {
    Style::new().yellow().apply_to(text).to_string()
}

pub fn red(text: &str) -> String {
    Style::new().red().apply_to(text).to_string()
}

pub fn cyan(text: &str) -> String {
    Style::new().cyan().apply_to(text).to_string()
}

/// The same styles for stderr, whose colour setting may differ from stdout's.
pub fn err_red(text: &str) -> String {
    Style::new().red().for_stderr().apply_to(text).to_string()
}

pub fn err_dim(text: &str) -> String {
    Style::new().dim().for_stderr().apply_to(text).to_string()
}

pub fn err_green(text: &str) -> String {
    Style::new().green().for_stderr().apply_to(text).to_string()
}

pub fn err_bold(text: &str) -> String {
    Style::new().bold().for_stderr().apply_to(text).to_string()
}

/// A spinner on stderr with `message`; hidden when stderr is not a terminal,
/// so logs and pipes only get the final line the caller prints.
pub fn spinner(message: impl Into<String>) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if !stderr_is_tty() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{spinner:.cyan} {msg} {elapsed:.dim}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_message(message.into());
    bar.enable_steady_tick(Duration::from_millis(80));
    bar
}

/// Formats a duration for people: `45s`, `12m 3s`, `3h 4m`, `2d 5h`.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// Pads `text` to `width` visible columns (ANSI colour codes do not count).
pub fn pad(text: &str, width: usize) -> String {
    console::pad_str(text, width, console::Alignment::Left, None).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(61), "1m 1s");
        assert_eq!(human_duration(3 * 3600 + 240), "3h 4m");
        assert_eq!(human_duration(2 * 86_400 + 5 * 3600 + 7), "2d 5h");
    }
}
