//! Generates the Rust code for the project's protos, plus a file descriptor set per
//! package for gRPC server reflection. protoc comes vendored so a fresh machine needs no
//! system package for it.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    for (file, descriptor) in [
        ("proto/loader/v1/loader.proto", "loader_v1_descriptor.bin"),
        ("proto/remoteconfig/v1/remoteconfig.proto", "remoteconfig_v1_descriptor.bin"),
    ] {
        tonic_prost_build::configure()
            .file_descriptor_set_path(out.join(descriptor))
            .compile_protos(&[file], &["proto"])?;
        println!("cargo:rerun-if-changed={file}");
    }
    Ok(())
}
