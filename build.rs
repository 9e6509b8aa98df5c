//! Records the git commit the binary is built from, for `--version` and the
//! `oauth_token_operator_build_info` metric, as `OTO_GIT_COMMIT`.
//!
//! In order: `OAUTH_TOKEN_OPERATOR_GIT_COMMIT` from the environment (a build
//! from a tree without its history), `git rev-parse HEAD` in a checkout, the
//! `.cargo_vcs_info.json` that `cargo package` writes into a crate file (what
//! `cargo install` of a packaged crate builds from), else `unknown`.

use std::path::{Path, PathBuf};
use std::process::Command;

const OVERRIDE: &str = "OAUTH_TOKEN_OPERATOR_GIT_COMMIT";

fn main() {
    println!("cargo::rerun-if-env-changed={OVERRIDE}");
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let commit = std::env::var(OVERRIDE)
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| from_git(&manifest_dir))
        .or_else(|| from_vcs_info(&manifest_dir))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo::rustc-env=OTO_GIT_COMMIT={commit}");
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The checkout's HEAD, and reruns when HEAD moves (a commit, a checkout).
fn from_git(dir: &Path) -> Option<String> {
    // Only a checkout whose top level is this crate: not a crate unpacked
    // somewhere inside an unrelated repository.
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    let commit = git(dir, &["rev-parse", "HEAD"])?;
    for path in ["HEAD", "packed-refs"] {
        if let Some(file) = git(
            dir,
            &["rev-parse", "--path-format=absolute", "--git-path", path],
        ) {
            println!("cargo::rerun-if-changed={file}");
        }
    }
    let branch = git(dir, &["symbolic-ref", "-q", "HEAD"]);
    let branch_file = branch.and_then(|branch| {
        git(
            dir,
            &["rev-parse", "--path-format=absolute", "--git-path", &branch],
        )
    });
    if let Some(file) = branch_file {
        println!("cargo::rerun-if-changed={file}");
    }
    Some(commit)
}

/// `{"git": {"sha1": "..."}}` in a packaged crate.
fn from_vcs_info(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(".cargo_vcs_info.json")).ok()?;
    let sha1 = text.split("\"sha1\"").nth(1)?.split('"').nth(1)?;
    (sha1.len() == 40 && sha1.bytes().all(|b| b.is_ascii_hexdigit())).then(|| sha1.to_string())
}
