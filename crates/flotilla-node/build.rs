//! Compiles `proto/raft.proto` and `proto/cli.proto` with protox (pure Rust, no system
//! `protoc`) and generates the prost messages and the tonic clients and servers for the raft
//! transport and the CLI service.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/raft.proto");
    println!("cargo:rerun-if-changed=proto/cli.proto");
    let descriptors = protox::compile(["proto/raft.proto", "proto/cli.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Entry payloads and snapshot data stay `Bytes`: no copy out of the receive buffer.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
