//! Compiles proto/ into Rust with the vendored protoc, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // For gRPC server reflection (`grpcurl list`), served on the API port.
        .file_descriptor_set_path(out_dir.join("scaleout_descriptor.bin"))
        .compile_protos(&["proto/scaleout.proto", "proto/raft.proto"], &["proto"])?;
    Ok(())
}
