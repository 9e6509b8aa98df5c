//! The two ways to build the image agree: the `Dockerfile` (for people with a
//! container engine) and `scripts/image` (what CI and the node tier use)
//! define the same user, entrypoint, command, exposed ports and binary path.
//! The image `scripts/image` writes is read back from its archive, so what
//! is compared is what a container runtime would see. Its CA bundle, which
//! the token client's verifier reads, holds Google's roots.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use oauth_token_operator::token_client::ExtraRoots;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Where the token client's verifier finds the system's roots in the image.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The runtime settings of the Dockerfile's final stage.
#[derive(Debug, Default)]
struct DockerfileStage {
    user: Option<String>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    exposed: BTreeSet<String>,
    /// Destinations of files copied from the build stage.
    copied_to: Vec<String>,
}

/// Reads the final stage (after the last `FROM`), joining continued lines.
/// Only the exec (JSON) form of ENTRYPOINT and CMD is accepted: the shell
/// form would wrap the binary in a shell the distroless base does not have.
fn final_stage(dockerfile: &str) -> DockerfileStage {
    let joined = dockerfile.replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let last_from = lines
        .iter()
        .rposition(|l| l.to_ascii_uppercase().starts_with("FROM "))
        .expect("a FROM line");
    let mut stage = DockerfileStage::default();
    for line in &lines[last_from + 1..] {
        let (instruction, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        let exec_form = || -> Vec<String> {
            serde_json::from_str(rest).unwrap_or_else(|e| {
                panic!("{instruction} {rest}: use the exec form, a JSON array ({e})")
            })
        };
        match instruction.to_ascii_uppercase().as_str() {
            "USER" => stage.user = Some(rest.to_string()),
            "ENTRYPOINT" => stage.entrypoint = Some(exec_form()),
            "CMD" => stage.cmd = Some(exec_form()),
            "EXPOSE" => {
                for port in rest.split_whitespace() {
                    let port = if port.contains('/') {
                        port.to_string()
                    } else {
                        format!("{port}/tcp")
                    };
                    stage.exposed.insert(port);
                }
            }
            "COPY" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                stage
                    .copied_to
                    .push(words.last().expect("a destination").to_string());
            }
            _ => {}
        }
    }
    stage
}

/// An image archive written by `scripts/image`: its config and the files of
/// its layers (path → (mode, size)).
struct Archive {
    config: Value,
    files: std::collections::BTreeMap<String, (u32, u64)>,
    dir: PathBuf,
}

impl Archive {
    /// Builds the operator image around the test build's binary (the
    /// definitions under test do not depend on which build it is).
    fn build_operator_image(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("oto-image-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let output = Command::new(Path::new(ROOT).join("scripts/image"))
            .args([
                "operator",
                "--binary",
                env!("CARGO_BIN_EXE_oauth-token-operator"),
            ])
            .arg("--out")
            .arg(&dir)
            .output()
            .expect("run scripts/image");
        assert!(
            output.status.success(),
            "scripts/image operator: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        let path = stdout
            .lines()
            .next()
            .expect("the archive's path")
            .to_string();
        Self::read(&path, dir)
    }

    /// Reads the docker-archive view (manifest.json) with Python's tarfile,
    /// which the scripts need anyway.
    fn read(path: &str, dir: PathBuf) -> Self {
        let script = r#"
import json, sys, tarfile
with tarfile.open(sys.argv[1]) as archive:
    manifest = json.load(archive.extractfile("manifest.json"))[0]
    config = json.load(archive.extractfile(manifest["Config"]))
    files = {}
    for layer in manifest["Layers"]:
        with tarfile.open(fileobj=archive.extractfile(layer)) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    files["/" + member.name.lstrip("./")] = [member.mode, member.size]
                    if member.name.lstrip("./") == sys.argv[2].lstrip("/"):
                        open(sys.argv[3], "wb").write(tar.extractfile(member).read())
print(json.dumps({"config": config, "files": files}))
"#;
        let bundle = dir.join("ca-certificates.crt");
        let output = Command::new("python3")
            .args(["-c", script, path, CA_BUNDLE])
            .arg(&bundle)
            .output()
            .expect("python3");
        assert!(
            output.status.success(),
            "reading {path}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
        let files = summary["files"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, v)| {
                let mode = v[0].as_u64().unwrap() as u32;
                (name.clone(), (mode, v[1].as_u64().unwrap()))
            })
            .collect();
        Archive {
            config: summary["config"]["config"].clone(),
            files,
            dir,
        }
    }

    fn strings(&self, key: &str) -> Option<Vec<String>> {
        serde_json::from_value(self.config[key].clone()).ok()
    }
}

impl Drop for Archive {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_dockerfile_and_scripts_image_define_the_same_runtime() {
    let dockerfile = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let stage = final_stage(&dockerfile);
    let image = Archive::build_operator_image("runtime");

    assert_eq!(image.config["User"].as_str(), stage.user.as_deref(), "user");
    assert_eq!(image.strings("Entrypoint"), stage.entrypoint, "entrypoint");
    assert_eq!(image.strings("Cmd"), stage.cmd, "cmd");
    let exposed: BTreeSet<String> = image.config["ExposedPorts"]
        .as_object()
        .map(|ports| ports.keys().cloned().collect())
        .unwrap_or_default();
    assert_eq!(exposed, stage.exposed, "exposed ports");

    // The binary sits where the Dockerfile copies it and the entrypoint runs it.
    let binary = stage
        .copied_to
        .iter()
        .find(|to| to.ends_with("/oauth-token-operator"))
        .expect("the Dockerfile copies the binary");
    assert_eq!(
        stage.entrypoint.as_ref().and_then(|e| e.first()),
        Some(binary),
        "the Dockerfile's entrypoint is the copied binary"
    );
    let (mode, size) = image
        .files
        .get(binary)
        .unwrap_or_else(|| panic!("the image has no {binary}"));
    assert!(mode & 0o111 != 0 && *size > 0, "{binary} is an executable");
}

#[test]
fn the_image_trusts_googles_roots_through_the_bundle_its_verifier_reads() {
    let image = Archive::build_operator_image("roots");
    let env = image.strings("Env").unwrap_or_default();
    assert!(
        env.contains(&format!("SSL_CERT_FILE={CA_BUNDLE}")),
        "the image points the verifier at {CA_BUNDLE}: {env:?}"
    );
    let bundle_path = image.dir.join("ca-certificates.crt");
    let bundle = std::fs::read_to_string(&bundle_path).expect("the image's CA bundle");
    // Google's token endpoint chains to GTS Root R1 (cross-signed by
    // GlobalSign Root CA); the other GTS roots back its other hosts.
    for root in [
        "GTS_Root_R1",
        "GTS_Root_R2",
        "GTS_Root_R3",
        "GTS_Root_R4",
        "GlobalSign_Root_CA",
    ] {
        let pem = std::fs::read_to_string(format!("/usr/share/ca-certificates/mozilla/{root}.crt"))
            .unwrap_or_else(|e| panic!("Debian's ca-certificates package ({root}): {e}"));
        assert!(
            bundle.contains(pem.trim()),
            "{root} is in the image's bundle"
        );
    }
    // Every certificate in it is one rustls accepts as a trust anchor.
    let roots = ExtraRoots::from_pem_file(&bundle_path).expect("a bundle rustls reads");
    assert!(roots.len() > 100, "{} roots", roots.len());
}
