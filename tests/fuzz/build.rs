//! Generates the message types of the project's protos with prost alone: the targets
//! decode requests and responses, they serve nothing.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let dir = "../../shared-proto/proto";
    let files =
        [format!("{dir}/loader/v1/loader.proto"), format!("{dir}/remoteconfig/v1/remoteconfig.proto")];
    prost_build::compile_protos(&files, &[dir])?;
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    Ok(())
}
