fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/berth/raft/v1/raft.proto",
        "proto/berth/cluster/v1/cluster.proto",
        "proto/berth/kv/v1/kv.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .bytes(".berth.raft.v1")
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
