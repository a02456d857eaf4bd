//! Compiles proto/airlock/v1 with tonic-prost-build. Uses `$PROTOC` when set,
//! else the protoc shipped in the `protoc-bin-vendored` crate, so no machine
//! needs protoc installed.

use std::path::PathBuf;

const FILES: [&str; 4] = [
    "airlock/v1/events.proto",
    "airlock/v1/proxy.proto",
    "airlock/v1/reviewer.proto",
    "airlock/v1/audit.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=PROTOC");
    for f in FILES {
        println!("cargo:rerun-if-changed={f}");
    }

    let mut includes = vec![PathBuf::from(".")];
    let mut config = tonic_prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
        // The vendored protoc carries the well-known types (timestamp, duration).
        includes.push(protoc_bin_vendored::include_path()?);
    }

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let files: Vec<PathBuf> = FILES.iter().map(PathBuf::from).collect();
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("airlock_descriptor.bin"))
        .compile_with_config(config, &files, &includes)?;
    Ok(())
}
