//! The repository stands on its own: its license is the one Cargo.toml declares, every
//! document it refers to exists, and `docs/architecture.md` covers every module
//! `src/lib.rs` declares.

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_license_file_is_the_license_cargo_toml_declares() {
    assert_eq!(env!("CARGO_PKG_LICENSE"), "Apache-2.0");
    let license = read("LICENSE");
    for needle in [
        "Apache License",
        "Version 2.0, January 2004",
        "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
        "9. Accepting Warranty or Additional Liability.",
        "END OF TERMS AND CONDITIONS",
        "APPENDIX: How to apply the Apache License to your work.",
    ] {
        assert!(license.contains(needle), "LICENSE lacks {needle:?}");
    }
}

/// Every text file under `dir` (recursively), skipping build output and VCS data.
fn text_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !["target", ".git", "corpus", "artifacts", "node_modules"].contains(&name.as_str()) {
                text_files(&path, found);
            }
        } else if std::fs::read_to_string(&path).is_ok() {
            found.push(path);
        }
    }
}

#[test]
fn no_file_refers_to_a_design_document_that_is_not_here() {
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches", "deploy", "docs", "fuzz"] {
        text_files(&root().join(dir), &mut files);
    }
    files.push(root().join("README.md"));
    // Built from parts, so this file does not match itself.
    let missing = ["DESIGN", ".md"].concat();
    let offending: Vec<String> = files
        .iter()
        .filter(|path| std::fs::read_to_string(path).unwrap().contains(&missing))
        .map(|path| path.strip_prefix(root()).unwrap().display().to_string())
        .collect();
    assert!(
        offending.is_empty(),
        "these refer to {missing}, which is not in the repository (docs/architecture.md is): {offending:?}"
    );
    assert!(root().join("docs/architecture.md").is_file());
    assert!(read("README.md").contains("docs/architecture.md"));
}

#[test]
fn the_architecture_document_covers_every_module() {
    let architecture = read("docs/architecture.md");
    let modules: Vec<String> = read("src/lib.rs")
        .lines()
        .filter_map(|line| line.strip_prefix("pub mod "))
        .map(|rest| rest.trim_end_matches(';').to_owned())
        .collect();
    assert!(modules.len() > 10, "{modules:?}");
    for module in &modules {
        assert!(
            architecture.contains(&format!("| `{module}` |")),
            "docs/architecture.md has no row for the module `{module}`"
        );
    }
    // The example route it describes is the file the tests, fuzz and benches load.
    let example = read("tests/fixtures/configs/valid/design.yaml");
    assert!(example.contains("docs/architecture.md"));
    for line in [
        "- repair: orphan_lines",
        "name: upstream-pings",
        "path_prefix: /v1/assistant/stream",
    ] {
        assert!(
            example.contains(line) && architecture.contains(line),
            "{line}"
        );
    }
}
