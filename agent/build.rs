//! Embeds the eBPF object when `cargo xtask build-ebpf` has produced it,
//! and generates the CRI gRPC client from the vendored proto.
//!
//! Without the object an empty one is embedded and the agent runs in its
//! fallback mode, so `cargo build -p agent` never needs nightly or
//! bpf-linker. The proto is compiled by protox, so no `protoc` either.

use std::{env, fs, path::PathBuf};

fn main() {
    embed_ebpf();
    cri_client();
}

fn cri_client() {
    let proto = "proto/cri-api/runtime/v1/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile(["runtime/v1/api.proto"], ["proto/cri-api"])
        .expect("compiling the CRI proto");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds)
        .expect("generating the CRI client");
}

fn embed_ebpf() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let dir = env::var_os("CGSCOPE_EBPF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/ebpf-out"));
    // Watching the directory (not the file) keeps cargo from re-running this
    // script on every build while the object does not exist yet.
    let _ = fs::create_dir_all(&dir);
    println!("cargo:rerun-if-changed={}", dir.display());
    println!("cargo:rerun-if-env-changed=CGSCOPE_EBPF_DIR");

    let object = dir.join("cgscope.bpf.o");
    let bytes = fs::read(&object).unwrap_or_default();
    if bytes.is_empty() {
        println!(
            "cargo:warning=no eBPF object at {}: building cgscope without eBPF \
             (run `cargo xtask build-ebpf` to embed it)",
            object.display()
        );
    }
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("cgscope.bpf.o");
    fs::write(out, bytes).expect("writing the embedded eBPF object");
}
