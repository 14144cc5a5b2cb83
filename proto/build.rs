//! Generates the Rust code for every .proto file. The public `berth.v1`
//! messages also get serde, with Kubernetes' JSON names, so that manifests
//! deserialize straight into them and `get -o json|yaml` prints them.

use std::path::PathBuf;

/// Fields whose JSON name is not the plain camelCase of the proto name.
const RENAMES: &[(&str, &str)] = &[
    ("NodeSpec.pod_cidr", "podCIDR"),
    ("NodeSpec.pod_cidrs", "podCIDRs"),
    ("NodeSpec.provider_id", "providerID"),
    ("PodStatus.host_ip", "hostIP"),
    ("PodStatus.pod_ip", "podIP"),
    ("PodStatus.pod_ips", "podIPs"),
    ("ContainerPort.host_ip", "hostIP"),
    ("ServiceSpec.cluster_ip", "clusterIP"),
    ("ServiceSpec.cluster_ips", "clusterIPs"),
    ("ContainerStatus.image_id", "imageID"),
    ("ContainerStatus.container_id", "containerID"),
    ("ContainerStateTerminated.container_id", "containerID"),
    ("NodeSystemInfo.machine_id", "machineID"),
    ("NodeSystemInfo.boot_id", "bootID"),
    ("NodeSystemInfo.system_uuid", "systemUUID"),
    ("ListMeta.continue_token", "continue"),
    ("DaemonEndpoint.port", "Port"),
    ("Volume.downward_api", "downwardAPI"),
    ("VolumeProjection.downward_api", "downwardAPI"),
];

/// Kubernetes "int or string" fields: a number in a manifest is accepted.
const INT_OR_STRING: &[&str] = &[
    "HttpGetAction.port",
    "TcpSocketAction.port",
    "ServicePort.target_port",
    "RollingUpdateDeployment.max_unavailable",
    "RollingUpdateDeployment.max_surge",
    "ResourceFieldSelector.divisor",
    "EmptyDirVolumeSource.size_limit",
];

/// File permission bits: YAML 1.1's octal `0644` (kubectl's YAML) is read
/// as octal, as Kubernetes does, not refused.
const FILE_MODES: &[&str] = &[
    "KeyToPath.mode",
    "ConfigMapVolumeSource.default_mode",
    "SecretVolumeSource.default_mode",
    "DownwardAPIVolumeFile.mode",
    "DownwardAPIVolumeSource.default_mode",
    "ProjectedVolumeSource.default_mode",
];

/// Quantity maps: `cpu: 1` is as good as `cpu: "1"`.
const QUANTITY_MAPS: &[&str] = &[
    "ResourceRequirements.limits",
    "ResourceRequirements.requests",
    "NodeStatus.capacity",
    "NodeStatus.allocatable",
];

/// Every service's codec: a request that does not decode is
/// INVALID_ARGUMENT (see `codec.rs`).
const CODEC: &str = "crate::codec::BerthCodec";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let internal = [
        "proto/berth/raft/v1/raft.proto",
        "proto/berth/cluster/v1/cluster.proto",
        "proto/berth/kv/v1/kv.proto",
        "proto/berth/security/v1/security.proto",
    ];
    let public = ["proto/berth/v1/objects.proto", "proto/berth/v1/api.proto"];
    for p in internal.iter().chain(&public) {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .codec_path(CODEC)
        .bytes(".berth.raft.v1")
        .compile_protos(&internal, &["proto"])?;

    let mut public_build = tonic_prost_build::configure()
        .codec_path(CODEC)
        .btree_map(".berth.v1")
        .file_descriptor_set_path(out.join("berth_v1_descriptor.bin"))
        .message_attribute(
            ".berth.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] \
             #[serde(default, rename_all = \"camelCase\", deny_unknown_fields)]",
        )
        .field_attribute(
            ".berth.v1",
            "#[serde(skip_serializing_if = \"crate::serde_helpers::is_default\")]",
        );
    for (field, name) in RENAMES {
        public_build = public_build.field_attribute(
            format!(".berth.v1.{field}"),
            format!("#[serde(rename = \"{name}\")]"),
        );
    }
    for field in INT_OR_STRING {
        public_build = public_build.field_attribute(
            format!(".berth.v1.{field}"),
            "#[serde(deserialize_with = \"crate::serde_helpers::int_or_string\")]",
        );
    }
    for field in FILE_MODES {
        public_build = public_build.field_attribute(
            format!(".berth.v1.{field}"),
            "#[serde(deserialize_with = \"crate::serde_helpers::file_mode\")]",
        );
    }
    for field in QUANTITY_MAPS {
        public_build = public_build.field_attribute(
            format!(".berth.v1.{field}"),
            "#[serde(deserialize_with = \"crate::serde_helpers::quantity_map\")]",
        );
    }
    public_build.compile_protos(&public, &["proto"])?;
    Ok(())
}
