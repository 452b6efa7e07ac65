//! `sse-gateway completions SHELL` and `sse-gateway man`: shell completions and the man
//! page, generated from the same clap definition that parses the command line, so they
//! never drift from it. Packagers run them at install time; nothing is checked in.

use std::io::{self, Write};

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;

use super::Cli;

/// Writes the completion script for `shell` to `out`.
pub(super) fn completions(shell: Shell, out: &mut dyn Write) {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "sse-gateway", out);
}

/// Writes the man page (roff, section 1) to `out`.
///
/// One page, the only one installed: `clap_mangen`'s own page lists the commands as
/// `sse-gateway-check(1)` and so on, pages of their own that nothing writes, so each
/// command's synopsis, description and options go on this page instead, in a section
/// of its own with them as subsections.
pub(super) fn man(out: &mut dyn Write) -> io::Result<()> {
    let mut command = Cli::command().disable_help_subcommand(true);
    // Names each command `sse-gateway check` and gives it the global `--config`.
    command.build();
    let page = Man::new(command.clone());
    let mut roff = Vec::new();
    page.render_title(&mut roff)?;
    page.render_name_section(&mut roff)?;
    page.render_synopsis_section(&mut roff)?;
    page.render_description_section(&mut roff)?;
    page.render_options_section(&mut roff)?;
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        let name = sub.get_bin_name().unwrap_or_else(|| sub.get_name());
        writeln!(roff, ".SH \"{}\"", name.to_uppercase().replace('-', "\\-"))?;
        let sub = Man::new(sub.clone());
        let mut sections = Vec::new();
        sub.render_synopsis_section(&mut sections)?;
        sub.render_description_section(&mut sections)?;
        sub.render_options_section(&mut sections)?;
        for line in String::from_utf8_lossy(&sections).lines() {
            match line.strip_prefix(".SH ") {
                Some(heading) => writeln!(roff, ".SS {heading}")?,
                None => writeln!(roff, "{line}")?,
            }
        }
    }
    page.render_extra_section(&mut roff)?;
    page.render_version_section(&mut roff)?;
    // Each render starts with the same two lines defining `\*(Aq`; once is enough.
    let mut preamble = 0;
    for line in String::from_utf8_lossy(&roff).lines() {
        if line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq") {
            preamble += 1;
            if preamble > 2 {
                continue;
            }
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}
