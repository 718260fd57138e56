//! Compiles the public contract in `proto/` without `protoc`: `protox` parses the files into a
//! descriptor set, which is written out for gRPC reflection and the JSON mapping, and handed to
//! `tonic-prost-build`. The echo service of `puente bench` (`proto/puente/bench/v1/`) is compiled
//! on its own, so that it stays out of the descriptor set the exchange serves by reflection.
//! Also records the commit the binary is built from, for `puente --version`.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

/// The `.proto` files of one package directory, sorted.
fn proto_files(dir: &str) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|ext| ext == "proto"));
    files.sort();
    Ok(files)
}

/// Inputs that decide what is compiled: a change to any of them while the tree has
/// uncommitted changes must refresh the `-dirty` mark, which `git` alone cannot signal.
const SOURCE_INPUTS: [&str; 4] = ["src", "proto", "Cargo.toml", "Cargo.lock"];

/// Runs `git` in the crate's directory; `None` when git is missing or fails.
fn git(manifest_dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(manifest_dir)
        .args(args)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8(output.stdout)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether `commit` looks like what `git rev-parse` prints (7 to 40 hex digits), optionally
/// followed by `-dirty`.
fn is_commit_name(commit: &str) -> bool {
    let hash = commit.strip_suffix("-dirty").unwrap_or(commit);
    (7..=40).contains(&hash.len()) && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commit of the checkout at `manifest_dir`, with `-dirty` when tracked files differ
/// from it, after printing the `rerun-if-changed` lines that make a commit, checkout or
/// edit refresh it. `None` when this is not the top of a git checkout (a crates.io tarball,
/// a Docker build without `.git`, or a copy inside some other repository, whose commit would
/// be the wrong one).
fn commit_from_git(manifest_dir: &Path) -> Option<String> {
    let toplevel = git(manifest_dir, &["rev-parse", "--show-toplevel"])?;
    if fs::canonicalize(&toplevel).ok()? != fs::canonicalize(manifest_dir).ok()? {
        return None;
    }
    let commit = git(manifest_dir, &["rev-parse", "--short=12", "HEAD"])?;

    // Git names its own files: in a worktree `.git` is a file and refs live in the common
    // directory. HEAD moves on checkout; the branch's ref on commit, either as a loose file or,
    // once packed, in packed-refs; logs/HEAD on both, which also covers a loose ref appearing
    // after the branch was packed; the index on staging.
    let mut watched = vec!["HEAD".to_string(), "logs/HEAD".into(), "packed-refs".into()];
    watched.extend(git(manifest_dir, &["symbolic-ref", "-q", "HEAD"]));
    watched.push("index".into());
    for name in &watched {
        if let Some(path) = git(manifest_dir, &["rev-parse", "--git-path", name]) {
            let path = manifest_dir.join(path);
            // A path that does not exist would make cargo rerun this script on every build.
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    for input in SOURCE_INPUTS {
        println!("cargo:rerun-if-changed={input}");
    }

    let changes = git(
        manifest_dir,
        &["status", "--porcelain", "--untracked-files=no"],
    )?;
    Some(if changes.is_empty() {
        commit
    } else {
        format!("{commit}-dirty")
    })
}

/// The commit `puente --version` names: `PUENTE_GIT_COMMIT` when set (a Docker build, which
/// leaves `.git` out of its context), else the checkout's, else `unknown`.
fn build_commit() -> Result<String, Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=PUENTE_GIT_COMMIT");
    if let Some(given) = env::var("PUENTE_GIT_COMMIT").ok().filter(|c| !c.is_empty()) {
        if !is_commit_name(&given) {
            return Err(format!(
                "PUENTE_GIT_COMMIT={given:?} is not a commit: 7 to 40 hex digits, optionally followed by -dirty"
            )
            .into());
        }
        return Ok(given);
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    Ok(commit_from_git(&manifest_dir).unwrap_or_else(|| "unknown".into()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rustc-env=PUENTE_BUILD_COMMIT={}", build_commit()?);

    let descriptors = protox::compile(proto_files("proto/puente/v1")?, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("puente_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // `prost::Name` on every message, so the JSON mapping in `pb::json` finds a message's
    // descriptor from its type. The servers decode requests with `codec::ServerCodec`, which
    // answers INVALID_ARGUMENT for a request that does not decode; the clients keep tonic's
    // codec (an answer that does not decode is the server's fault, INTERNAL), so they are
    // generated apart, into `client/`, referring to the messages generated here.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::codec::ServerCodec")
        .compile_fds_with_config(descriptors.clone(), config)?;
    let client_dir = out_dir.join("client");
    fs::create_dir_all(&client_dir)?;
    tonic_prost_build::configure()
        .build_server(false)
        .extern_path(".puente.v1", "crate::pb::v1")
        .out_dir(&client_dir)
        .compile_fds(descriptors)?;

    let bench = protox::compile(proto_files("proto/puente/bench/v1")?, ["proto"])?;
    tonic_prost_build::compile_fds(bench)?;
    Ok(())
}
