//! The CRI v1 client, generated from the agent's vendored proto, with which
//! the tests drive a real containerd as a kubelet would.

fn main() {
    let include = "../agent/proto/cri-api";
    println!("cargo:rerun-if-changed={include}");
    let fds =
        protox::compile(["runtime/v1/api.proto"], [include]).expect("compiling the CRI proto");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds)
        .expect("generating the CRI client");
}
