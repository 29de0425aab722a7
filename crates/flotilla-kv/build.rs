//! Compiles `proto/kv.proto` and `proto/pd.proto` with protox (pure Rust, no system `protoc`) into the prost
//! messages and the tonic client and server of the KV service.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/kv.proto");
    println!("cargo:rerun-if-changed=proto/pd.proto");
    let descriptors = protox::compile(["proto/kv.proto", "proto/pd.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Keys and values stay `Bytes`: no copy out of the receive buffer.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
