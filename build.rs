//! Build script: records the git commit the binary is built from, for `--version`.
//!
//! `SSE_GATEWAY_COMMIT`, when set, wins (an image build has no `.git` in its context and
//! passes the commit in); otherwise `git rev-parse --short HEAD`; outside a git
//! checkout, or without git, the commit is "unknown" and the build still succeeds.
//! Cargo is told to rerun this when HEAD moves (a commit, a checkout), which touches
//! HEAD itself, the branch's ref file, or `packed-refs`.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The file behind `git rev-parse --git-path NAME` (worktrees included), if it exists.
fn git_path(name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(git(&["rev-parse", "--git-path", name])?);
    let path = if path.is_absolute() {
        path
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    path.exists().then_some(path)
}

fn main() {
    println!("cargo:rerun-if-env-changed=SSE_GATEWAY_COMMIT");
    let commit = match std::env::var("SSE_GATEWAY_COMMIT") {
        Ok(commit) if !commit.trim().is_empty() => commit.trim().to_owned(),
        _ => {
            // Watch what moves with HEAD; a missing file is not watched, since cargo
            // would then rerun this script on every build.
            let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watched.push(branch);
            }
            for name in &watched {
                if let Some(path) = git_path(name) {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
            git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    // Without any watched file (not a git checkout), rerun only when this script
    // changes, not on every edit of the crate.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-env=SSE_GATEWAY_COMMIT={commit}");
}
