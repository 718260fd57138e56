//! Compiles the public contract in `proto/` without `protoc`: `protox` parses the files into a
//! descriptor set, which is written out for gRPC reflection and the JSON mapping, and handed to
//! `tonic-prost-build`.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut files: Vec<PathBuf> = fs::read_dir("proto/puente/v1")?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|ext| ext == "proto"));
    files.sort();

    let descriptors = protox::compile(&files, ["proto"])?;
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
    Ok(())
}
