//! `scripts/release` end to end: every artifact is produced, its checksum
//! holds, and each works as its user meets it: the binary from the archive
//! prints the version and commit, the kubectl plugin is found by `kubectl`
//! where krew would link it, the krew manifest names that archive with its
//! SHA-256, the chart installs from its `.tgz` on the real API server, the
//! image carries the same binary, the SBOM lists the dependencies, and the
//! release workflow passes actionlint.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::fixtures::ensure_crd;
use crate::support::objects::{helm, tool};
use crate::support::with_namespace;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const VERSION: &str = env!("CARGO_PKG_VERSION");
const NAME: &str = "oauth-token-operator";

fn ok(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str], dir: &Path) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run a program")
}

fn sha256(path: &Path) -> String {
    let out = ok(
        run("sha256sum", &[path.to_str().unwrap()], Path::new(ROOT)),
        "sha256sum",
    );
    out.split_whitespace().next().unwrap().to_string()
}

fn head_commit() -> String {
    ok(run("git", &["rev-parse", "HEAD"], Path::new(ROOT)), "git")
        .trim()
        .to_string()
}

/// Builds the release into a fresh directory once.
fn release(dir: &Path) {
    ok(
        run(
            format!("{ROOT}/scripts/release"),
            &["--allow-dirty", dir.to_str().unwrap()],
            Path::new(ROOT),
        ),
        "scripts/release",
    );
}

fn check_sums_and_list(dist: &Path) {
    let listed = ok(
        run("sha256sum", &["-c", "SHA256SUMS"], dist),
        "sha256sum -c",
    );
    let mut names: Vec<String> = listed
        .lines()
        .map(|l| {
            l.strip_suffix(": OK")
                .unwrap_or_else(|| panic!("{l}"))
                .to_string()
        })
        .collect();
    names.sort();
    let mut expected = vec![
        format!("{NAME}-{VERSION}-x86_64-unknown-linux-gnu.tar.gz"),
        format!("{NAME}-{VERSION}-image.tar"),
        format!("{NAME}-{VERSION}.tgz"),
        format!("{NAME}-{VERSION}.cdx.json"),
        "oauth-token.yaml".to_string(),
    ];
    expected.sort();
    assert_eq!(names, expected);
}

/// Unpacks the archive, checks the krew manifest against it, and links the
/// binary as krew does (`bin/kubectl-oauth_token`); returns that bin folder.
fn check_archive_and_krew_manifest(dist: &Path, work: &Path) -> PathBuf {
    let tarball = dist.join(format!("{NAME}-{VERSION}-x86_64-unknown-linux-gnu.tar.gz"));
    let store = work.join("store");
    std::fs::create_dir_all(&store).unwrap();
    ok(
        run("tar", &["-xzf", tarball.to_str().unwrap()], &store),
        "tar",
    );
    let mut files: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["LICENSE", "README.md", NAME]);

    let text = std::fs::read_to_string(dist.join("oauth-token.yaml")).unwrap();
    let manifest: Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(
        manifest["apiVersion"],
        "krew.googlecontainertools.github.com/v1alpha2"
    );
    assert_eq!(manifest["kind"], "Plugin");
    assert_eq!(
        manifest["metadata"]["name"], "oauth-token",
        "the file's name"
    );
    let spec = &manifest["spec"];
    assert_eq!(spec["version"], format!("v{VERSION}"));
    for key in ["homepage", "shortDescription", "description"] {
        assert!(spec[key].as_str().is_some_and(|s| !s.is_empty()), "{key}");
    }
    let platforms = spec["platforms"].as_array().unwrap();
    assert_eq!(platforms.len(), 1);
    let platform = &platforms[0];
    assert_eq!(platform["selector"]["matchLabels"]["os"], "linux");
    assert_eq!(platform["selector"]["matchLabels"]["arch"], "amd64");
    assert_eq!(platform["sha256"].as_str(), Some(sha256(&tarball).as_str()));
    let uri = platform["uri"].as_str().unwrap();
    assert!(
        uri.starts_with("https://")
            && uri.ends_with(&format!(
                "/v{VERSION}/{NAME}-{VERSION}-x86_64-unknown-linux-gnu.tar.gz"
            )),
        "{uri}"
    );
    assert_eq!(platform["bin"], NAME);
    for file in platform["files"].as_array().unwrap() {
        let from = file["from"].as_str().unwrap();
        assert!(store.join(from).exists(), "files: {from} is in the archive");
    }

    // krew links `bin` as kubectl-<name with '-' as '_'> in its bin folder.
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(store.join(NAME), bin.join("kubectl-oauth_token")).unwrap();
    bin
}

fn check_binary_and_plugin(work: &Path, plugin_bin: &Path) {
    let version = ok(
        run(work.join("store").join(NAME), &["--version"], work),
        "--version",
    );
    assert!(version.contains(VERSION), "{version}");
    assert!(version.contains(&head_commit()), "{version}");
    let path = format!(
        "{}:{}",
        plugin_bin.display(),
        std::env::var("PATH").unwrap()
    );
    let kubectl = |args: &[&str]| {
        Command::new("kubectl")
            .args(args)
            .env("PATH", &path)
            .output()
            .expect("run kubectl")
    };
    let listed = ok(kubectl(&["plugin", "list"]), "kubectl plugin list");
    assert!(listed.contains("kubectl-oauth_token"), "{listed}");
    let help = ok(
        kubectl(&["oauth-token", "--help"]),
        "kubectl oauth-token --help",
    );
    assert!(help.contains("Usage: kubectl oauth-token"), "{help}");
    assert!(
        !help.contains("\n  run "),
        "operator-only commands hidden: {help}"
    );
    let version = ok(
        kubectl(&["oauth-token", "--version"]),
        "kubectl oauth-token --version",
    );
    assert!(version.contains(&head_commit()), "{version}");
}

/// The image's archive: tagged with the version, holding the same binary.
fn check_image(dist: &Path, work: &Path) {
    let image = dist.join(format!("{NAME}-{VERSION}-image.tar"));
    let script = r#"
import hashlib, json, sys, tarfile
archive = tarfile.open(sys.argv[1])
manifest = json.load(archive.extractfile("manifest.json"))[0]
print(json.dumps(manifest["RepoTags"]))
for layer in manifest["Layers"]:
    with tarfile.open(fileobj=archive.extractfile(layer)) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith("/oauth-token-operator"):
                print(member.name, hashlib.sha256(tar.extractfile(member).read()).hexdigest())
"#;
    let out = ok(
        run("python3", &["-c", script, image.to_str().unwrap()], work),
        "read the image",
    );
    let mut lines = out.lines();
    let tags: Vec<String> = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert!(tags.contains(&format!("{NAME}:{VERSION}")), "{tags:?}");
    let binaries: Vec<&str> = lines.collect();
    assert_eq!(binaries.len(), 1, "{binaries:?}");
    let binary_sha = sha256(&work.join("store").join(NAME));
    assert!(
        binaries[0].ends_with(&binary_sha),
        "{binaries:?} vs {binary_sha}"
    );
}

fn check_sbom(dist: &Path) {
    let text = std::fs::read_to_string(dist.join(format!("{NAME}-{VERSION}.cdx.json"))).unwrap();
    let sbom: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    assert_eq!(sbom["specVersion"], "1.6");
    let names: Vec<&str> = sbom["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for dependency in ["kube", "chacha20poly1305", "rustls", "minijinja"] {
        assert!(
            names.contains(&dependency),
            "{dependency} missing from the SBOM"
        );
    }
}

#[tokio::test]
async fn scripts_release_builds_every_artifact_and_each_works() {
    let work = tempdir("release");
    let dist = work.join("dist");
    release(&dist);
    check_sums_and_list(&dist);
    let plugin_bin = check_archive_and_krew_manifest(&dist, &work);
    check_binary_and_plugin(&work, &plugin_bin);
    check_image(&dist, &work);
    check_sbom(&dist);

    // The chart installs from its package, on the real API server.
    let chart = dist.join(format!("{NAME}-{VERSION}.tgz"));
    let shown = ok(
        helm(&["show", "chart", chart.to_str().unwrap()]),
        "helm show",
    );
    assert!(shown.contains(&format!("version: {VERSION}")), "{shown}");
    assert!(shown.contains(&format!("appVersion: {VERSION}")), "{shown}");
    with_namespace("release", |client, ns| async move {
        ensure_crd(&client).await;
        let chart = chart.to_str().unwrap();
        // Cluster-scoped objects carry the release's name: one of its own.
        let release = format!("rel-{}", &ns[ns.len() - 5..]);
        let installed = helm(&["install", &release, chart, "-n", &ns]);
        let gone = helm(&["uninstall", &release, "-n", &ns]);
        let text = ok(installed, "helm install from the .tgz");
        assert!(text.contains("STATUS: deployed"), "{text}");
        ok(gone, "helm uninstall");
    })
    .await;

    // The release workflow lints clean.
    let workflow = format!("{ROOT}/.github/workflows/release.yml");
    let lint = run(tool("actionlint"), &[&workflow], Path::new(ROOT));
    ok(lint, "actionlint .github/workflows/release.yml");
    std::fs::remove_dir_all(&work).unwrap();
}

fn tempdir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "oto-{prefix}-{}-{}",
        std::process::id(),
        crate::support::random_fraction().to_bits()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
