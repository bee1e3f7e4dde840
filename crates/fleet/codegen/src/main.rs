//! Generates the Rust code of etcd's v3 gRPC API (KV, Watch, Lease, Auth clients and their messages)
//! from the `.proto` files in `crates/fleet/proto/` into `crates/fleet/src/proto/`.
//!
//! Run through `scripts/etcd-proto`, which installs Debian's `protobuf-compiler` and
//! `libprotobuf-dev` first. The output is checked in, so building handover needs no `protoc`.

use std::path::PathBuf;

fn main() {
    let fleet = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let protos = fleet.join("proto");
    let out = fleet.join("src/proto");
    std::fs::create_dir_all(&out).expect("create src/proto");
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(true)
        .out_dir(&out)
        .compile_protos(
            &[
                protos.join("auth.proto"),
                protos.join("kv.proto"),
                protos.join("rpc.proto"),
            ],
            &[protos],
        )
        .expect("protoc could not compile etcd's protos");
    println!("generated into {}", out.display());
}
