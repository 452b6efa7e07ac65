//! `sse-gateway completions SHELL` and `sse-gateway man`: shell completions and the man
//! page, generated from the same clap definition that parses the command line, so they
//! never drift from it. Packagers run them at install time; nothing is checked in.

use std::io::{self, Write};

use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

/// Writes the completion script for `shell` to `out`.
pub(super) fn completions(shell: Shell, out: &mut dyn Write) {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "sse-gateway", out);
}

/// Writes the man page (roff, section 1) to `out`.
pub(super) fn man(out: &mut dyn Write) -> io::Result<()> {
    clap_mangen::Man::new(Cli::command()).render(out)
}
