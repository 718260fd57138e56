//! Compiles the public contract in `proto/` without `protoc`: `protox` parses the files into a
//! descriptor set, which is written out for gRPC reflection and the JSON mapping, and handed to
//! `tonic-prost-build`. The echo service of `puente bench` (`proto/puente/bench/v1/`) is compiled
//! on its own, so that it stays out of the descriptor set the exchange serves by reflection.

use std::{env, fs, path::PathBuf};

/// The `.proto` files of one package directory, sorted.
fn proto_files(dir: &str) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|ext| ext == "proto"));
    files.sort();
    Ok(files)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(proto_files("proto/puente/v1")?, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("puente_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // `prost::Name` on every message, so the JSON mapping in `pb::json` finds a message's
    // descriptor from its type.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure().compile_fds_with_config(descriptors, config)?;

    let bench = protox::compile(proto_files("proto/puente/bench/v1")?, ["proto"])?;
    tonic_prost_build::compile_fds(bench)?;
    Ok(())
}
